"""Recipes (flat dicts, as in :mod:`pdmd_lab.recipes`) of the D-MMD models: the toy students at k = 1, 2, 4
with and without the noise input, the binarised-MNIST teacher and its students at k = 4 and 8.

:func:`command` turns one into the ``pdmd-lab`` command line that trains it, so the commands in the README
and the shipped models come from the same data. Student runs need ``--fake-updates 1`` (D-MMD alternates
the auxiliary and generator steps one to one) and ``--cfg 1`` (the toy's target is the unguided joint).
"""

from __future__ import annotations

import copy

MNIST_TEACHER = "zoo:mnist-binary/teacher"  # the shipped teacher (the zoo builds it first)

TOY = {"teacher": "oracle:ring-mix-tokens", "cfg": 1.0, "iters": 1200, "batch_size": 1024, "lr_generator": 1e-4,
       "lr_fake": 1e-4, "fake_updates_per_generator_update": 1, "init_iters": 2000, "checkpoint_every": 500,
       "noise_dim": 8, "noise_gain": 100.0}
MNIST = {"teacher": MNIST_TEACHER, "cfg": 1.0, "iters": 800, "batch_size": 64, "lr_generator": 3e-5,
         "lr_fake": 3e-5, "fake_updates_per_generator_update": 1, "checkpoint_every": 250, "noise_dim": 4,
         "noise_gain": 30.0}

RECIPES: dict[str, dict] = {
    **{f"ring-mix-tokens/d-mmd-{k}s{tag}": {"kind": "student", "method": "d-mmd", "steps": k, **TOY, **extra}
       for k in (1, 2, 4) for tag, extra in (("", {}), ("-no-noise", {"noise_dim": 0}))},
    "mnist-binary/teacher": {"kind": "teacher", "data": "mnist-binary", "iters": 2500, "batch_size": 64, "lr": 1e-3,
                             "checkpoint_every": 500},
    **{f"mnist-binary/d-mmd-{k}s": {"kind": "student", "method": "d-mmd", "steps": k, **MNIST} for k in (4, 8)},
}

_FLAGS = {"fake_updates_per_generator_update": "fake-updates", "lr_generator": "lr"}


def get_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown D-MMD recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return copy.deepcopy(RECIPES[name])


def command(name: str, runs: str = "runs/d-mmd") -> str:
    """The ``pdmd-lab`` command line that trains recipe ``name`` into ``runs/<name>``."""
    r = get_recipe(name)
    kind = r.pop("kind")
    verb = "train-teacher" if kind == "teacher" else "distill"
    args = " ".join(f"--{_FLAGS.get(k, k.replace('_', '-'))} {v:g}" if isinstance(v, float)
                    else f"--{_FLAGS.get(k, k.replace('_', '-'))} {v}" for k, v in r.items())
    return f"pdmd-lab {verb} {args} --out {runs}/{name}"

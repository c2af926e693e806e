"""Named recipes: the exact settings every shipped model (and every study run) is built from.

Presets as data (EDM ``--preset``, nanoGPT ``config/*.py``): a recipe is a flat dict. For students its
keys are :class:`~pdmd_lab.distill.DistillConfig` fields plus the method's options; the zoo, the CLI
(``pdmd-lab distill --recipe ring-mix/phased-dmd-4s4p --out DIR``), the app's live tab and the
studies all read the same dicts, so a shipped model can be rebuilt exactly.
"""

from __future__ import annotations

import copy

TEACHER_CFG = {"ring-mix": 3.0, "mnist": 3.0, "grid-mix": 3.0}  # CFG of the real score per family

# Students: (name, method, steps, method options).
STUDENT_SPECS = [
    ("phased-dmd-4s4p", "phased-dmd", 4, {"phases": 4}),
    ("dmd-1s", "dmd", 1, {}),
    ("dmd2-sgts-4s", "dmd2-sgts", 4, {}),
    ("phased-dmd-4s2p", "phased-dmd", 4, {"phases": 2}),
    ("dp-dmd-4s", "dp-dmd", 4, {}),
]

RING_MIX = {"teacher": "oracle:ring-mix", "cfg": 3.0, "iters": 600, "batch_size": 256, "lr_generator": 1e-3,
            "lr_fake": 1e-3, "fake_updates_per_generator_update": 3, "weighting": "paper"}  # as the shipped ones
MNIST_TEACHER = "zoo:mnist/teacher"  # the shipped teacher (the zoo builds it first)
MNIST = {"teacher": MNIST_TEACHER, "cfg": 3.0, "iters": 1000, "batch_size": 32, "lr_generator": 1e-4,
         "lr_fake": 2e-4, "fake_updates_per_generator_update": 2, "weighting": "dmd2", "checkpoint_every": 100}
MNIST_OVERRIDES = {"dp-dmd-4s": {"dp_anchor_steps": 4}}

# The evidence study on ring-mix: longer runs, 5 critic updates, every baseline at its reference
# weighting ("dmd2", as in the DMD, DMD2 and DP-DMD code) and again at "paper" (rows named `-paper`),
# both weightings for Phased DMD, the disjoint-range ablation. Every row names its weighting.
STUDY = {"teacher": "oracle:ring-mix", "cfg": 3.0, "iters": 2000, "batch_size": 256, "lr_generator": 1e-3,
         "lr_fake": 1e-3, "fake_updates_per_generator_update": 5, "checkpoint_every": 500}
STUDY_SPECS = [
    ("dmd-1s", "dmd", 1, {"weighting": "dmd2"}),
    ("dmd2-sgts-4s", "dmd2-sgts", 4, {"weighting": "dmd2"}),
    ("dp-dmd-4s", "dp-dmd", 4, {"weighting": "dmd2"}),
    ("dmd-1s-paper", "dmd", 1, {"weighting": "paper"}),
    ("dmd2-sgts-4s-paper", "dmd2-sgts", 4, {"weighting": "paper"}),
    ("dp-dmd-4s-paper", "dp-dmd", 4, {"weighting": "paper"}),
    ("phased-dmd-4s4p", "phased-dmd", 4, {"phases": 4, "weighting": "paper"}),
    ("phased-dmd-4s4p-dmd2", "phased-dmd", 4, {"phases": 4, "weighting": "dmd2"}),
    ("phased-dmd-4s2p", "phased-dmd", 4, {"phases": 2, "weighting": "paper"}),
    ("phased-dmd-disjoint-4s4p", "phased-dmd-disjoint", 4, {"phases": 4, "weighting": "paper"}),
]


def _students(family: str, base: dict, specs, overrides: dict | None = None) -> dict[str, dict]:
    out = {}
    for name, method, steps, opts in specs:
        out[f"{family}/{name}"] = {"kind": "student", "method": method, "steps": steps, **base, **opts,
                                   **(overrides or {}).get(name, {})}
    return out


RECIPES: dict[str, dict] = {
    **_students("ring-mix", RING_MIX, STUDENT_SPECS),
    "mnist/teacher": {"kind": "teacher", "data": "mnist", "iters": 4500, "batch_size": 64, "lr": 1e-3},
    "mnist/classifier": {"kind": "classifier", "data": "mnist"},
    **_students("mnist", MNIST, STUDENT_SPECS, MNIST_OVERRIDES),
    **_students("study/ring-mix", STUDY, STUDY_SPECS),
    **_students("study/grid-mix", {**STUDY, "teacher": "oracle:grid-mix"}, STUDY_SPECS),
}


def _discrete_recipes() -> dict[str, dict]:
    """D-MMD's recipes (masked diffusion), kept beside its code in :mod:`pdmd_lab.discrete.recipes`."""
    try:
        from pdmd_lab.discrete.recipes import RECIPES as DISCRETE
    except ImportError:
        return {}
    return DISCRETE


RECIPES.update(_discrete_recipes())


def get_recipe(name: str) -> dict:
    """A copy of the recipe ``name``; ValueError listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; `pdmd-lab recipes` lists them ({len(RECIPES)} known)")
    return copy.deepcopy(RECIPES[name])


def student_config(name: str, **overrides):
    """The :class:`~pdmd_lab.distill.DistillConfig` of a student recipe, with ``overrides`` applied."""
    from pdmd_lab.distill import DistillConfig

    r = get_recipe(name)
    if r.pop("kind") != "student":
        raise ValueError(f"recipe {name!r} does not build a student")
    return DistillConfig.from_flat(**{**r, **overrides})


def describe(name: str) -> str:
    r = get_recipe(name)
    kind = r.pop("kind")
    return f"{name:40s} {kind:10s} " + " ".join(f"{k}={v}" for k, v in r.items())

"""Named recipes: the exact settings every shipped model (and every study run) is built from.

Presets as data (EDM ``--preset``, nanoGPT ``config/*.py``): a recipe is a flat dict. For students its
keys are :class:`~pdmd_lab.distill.DistillConfig` fields plus the method's options; the zoo, the CLI
(``pdmd-lab distill --recipe ring-mix/phased-dmd-4s4p --out DIR``), the app's live tab and the
studies all read the same dicts, so a shipped model can be rebuilt exactly.
"""

from __future__ import annotations

import copy

TEACHER_CFG = {"ring-mix": 3.0, "mnist": 3.0, "grid-mix": 3.0, "motion-mix": 1.5, "mnist-uncond": 1.0}  # real score CFG

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
    # The same experts trained in turn from the first iteration (LightX2V's schedule; it uses 2 regions).
    ("phased-dmd-alternating-4s4p", "phased-dmd-alternating", 4, {"phases": 4, "weighting": "paper"}),
    ("phased-dmd-alternating-4s2p", "phased-dmd-alternating", 4, {"phases": 2, "weighting": "paper"}),
]


# The two counting benchmarks (motion-mix, mnist-uncond): every baseline at its reference weighting,
# Phased DMD 4s4p as in the paper. The same settings for every method; the shipped motion-mix students are
# seed 0 of the study rows.
REFERENCE_SPECS = [
    ("dmd-1s", "dmd", 1, {"weighting": "dmd2"}),
    ("dmd2-sgts-4s", "dmd2-sgts", 4, {"weighting": "dmd2"}),
    ("dp-dmd-4s", "dp-dmd", 4, {"weighting": "dmd2"}),
    ("phased-dmd-4s4p", "phased-dmd", 4, {"phases": 4, "weighting": "paper"}),
]
# motion-mix: a 16-dim toy with an exact oracle, sized to run in minutes on one CPU core (600 updates of
# batch 128, 3 critic updates each; the starting MLP is fitted to the oracle for 1,000 iterations).
MOTION_MIX = {"teacher": "oracle:motion-mix", "cfg": 1.5, "iters": 600, "batch_size": 128, "lr_generator": 1e-3,
              "lr_fake": 1e-3, "fake_updates_per_generator_update": 3, "init_iters": 1000, "checkpoint_every": 200}
# mnist-uncond: the MNIST teacher with its null class (zoo:mnist-uncond/teacher, exported from mnist/teacher),
# CFG off; the shipped MNIST recipe's settings, except the length: 200 updates (1,000 there), to fit a CPU.
# Phased DMD at "dmd2" like every shipped MNIST student. Seed 0 of each row ships as ``mnist-uncond/<name>``.
MNIST_UNCOND = {**MNIST, "teacher": "zoo:mnist-uncond/teacher", "cfg": 1.0, "iters": 200, "checkpoint_every": 50}
MNIST_UNCOND_SPECS = [(n, m, k, {**o, "weighting": "dmd2"}) for n, m, k, o in REFERENCE_SPECS]


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
    # Derived: no training; ``builder(source folder, new folder)`` writes the model from another shipped one.
    "mnist-uncond/teacher": {"kind": "derived", "writes": "teacher", "source": "mnist/teacher",
                             "builder": "pdmd_lab.uncond:export_teacher"},
    **_students("study/ring-mix", STUDY, STUDY_SPECS),
    **_students("study/grid-mix", {**STUDY, "teacher": "oracle:grid-mix"}, STUDY_SPECS),
    **_students("motion-mix", MOTION_MIX, REFERENCE_SPECS),
    **_students("study/motion-mix", MOTION_MIX, REFERENCE_SPECS),
    **_students("study/motion-mix-cfg1", {**MOTION_MIX, "cfg": 1.0}, REFERENCE_SPECS),
    **_students("mnist-uncond", MNIST_UNCOND, MNIST_UNCOND_SPECS, MNIST_OVERRIDES),
    **_students("study/mnist-uncond", MNIST_UNCOND, MNIST_UNCOND_SPECS, MNIST_OVERRIDES),
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


_SIZES = ("cfg", "iters", "batch_size", "lr_generator", "lr_fake", "fake_updates_per_generator_update",
          "checkpoint_every", "init_iters")  # what a family's recipes size for its data


def teacher_family(teacher: str) -> str | None:
    """The family (dataset) of a teacher spec: ``oracle:X`` and ``zoo:X/...`` name it, a folder records it."""
    from pathlib import Path

    from pdmd_lab import io

    teacher = str(teacher)
    if teacher.startswith(("oracle:", "zoo:")):
        return teacher.split(":", 1)[1].split("/")[0]
    if (Path(teacher) / io.CONFIG).is_file():
        try:
            return io.read_config(teacher).get("dataset")
        except ValueError:
            return None
    return None


def family_defaults(teacher: str, method: str) -> tuple[str | None, dict]:
    """The training sizes to start from when a command names a teacher but no recipe: those of the student
    recipe of the teacher's family with the same teacher and method, else the same teacher, else the same
    method, else any (the starting net's config too when the teacher is the same). ``(None, {})`` when the
    family has no recipe."""
    family = teacher_family(teacher)
    students = {n: r for n, r in RECIPES.items() if r["kind"] == "student" and n.split("/")[0] == family}
    for match in (lambda r: r["teacher"] == teacher and r["method"] == method, lambda r: r["teacher"] == teacher,
                  lambda r: r["method"] == method, lambda r: True):
        for name, r in students.items():
            if match(r):
                keys = _SIZES + (("net",) if r["teacher"] == teacher else ())
                return name, {k: copy.deepcopy(r[k]) for k in keys if k in r}
    return None, {}


def describe(name: str) -> str:
    r = get_recipe(name)
    kind = r.pop("kind")
    return f"{name:40s} {kind:10s} " + " ".join(f"{k}={v}" for k, v in r.items())

"""The shipped models in ``assets/``, loaded by name, and the one command that rebuilds them.

Names are ``<family>/<model>``: ``mnist/teacher``, ``mnist/phased-dmd-4s4p``, ``ring-mix/dmd-1s``...
A teacher name gives a :class:`~pdmd_lab.student.TeacherSampler` (50 Euler steps with CFG by default;
``ring-mix/teacher`` is the exact oracle), a student name a :class:`~pdmd_lab.student.Student`.
``load`` also takes a folder path or ``oracle:<dataset>``.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pdmd_lab import io, safety
from pdmd_lab.data import DATASETS
from pdmd_lab.families import get_family
from pdmd_lab.io import ASSETS, resolve  # noqa: F401  (zoo.resolve: the one reader of ``zoo:`` specs)
from pdmd_lab.recipes import RECIPES
from pdmd_lab.student import Student

RUNS = Path("runs/zoo")


@dataclass
class Entry:
    """One shipped model and the recipe it is built from (:mod:`pdmd_lab.recipes`)."""

    name: str
    kind: str  # "teacher" | "classifier" | "student" | "derived" (written from another shipped model)
    args: dict = field(default_factory=dict)


ENTRIES: list[Entry] = [Entry(name, r["kind"], {k: v for k, v in r.items() if k != "kind"})
                        for name, r in RECIPES.items() if not name.startswith("study/")]


def parse_name(name: str) -> tuple[str, int | None]:
    """``"mnist/teacher@4"`` -> ``("mnist/teacher", 4)``; no ``@`` -> ``(name, None)``. The one parser of
    ``name@steps`` (the CLI, ``evaluate`` and the app use it)."""
    name = str(name)
    if "@" not in name:
        return name, None
    base, steps = name.rsplit("@", 1)
    try:
        n = int(steps)
    except ValueError:
        raise ValueError(f"bad step count in {name!r}: expected <model>@<int>") from None
    if n < 1:
        raise ValueError(f"step count must be >= 1 in {name!r}")
    return base, n


def list_models(assets: Path = ASSETS) -> list[str]:
    """Names of the shipped models (teachers with an exact oracle and a teacher CFG are always there)."""
    names = [f"{d}/teacher" for d in DATASETS if _lists_teacher(d)]
    if assets.exists():
        names += sorted(str(p.parent.relative_to(assets)) for p in assets.glob("*/*/config.json"))
    return names


def load(name: str, assets: Path = ASSETS, *, steps: int | None = None, cfg: float | None = None,
         strict: bool = False):
    """Load a shipped model by name (or a folder, or ``oracle:<dataset>``; ``name@steps`` for teachers) as a
    :class:`~pdmd_lab.student.Sampler`.

    Teachers come back as their family's teacher sampler (:meth:`~pdmd_lab.families.Family.teacher_sampler`:
    ``steps`` default 50, ``cfg`` default the dataset's); ``<dataset>/teacher`` of a dataset with an exact
    oracle is the oracle. Students have their steps and guidance distilled in: with ``strict``, asking a
    student for ``steps`` or ``cfg`` is an error instead of being ignored. ``zoo:<name>`` (how students
    record a shipped teacher) is the shipped name.
    """
    name, at_steps = parse_name(name)
    steps = at_steps if steps is None else steps
    safety.check_number("cfg", cfg, 0)  # NaN / inf or negative guidance: refused, for the app and notebooks too
    safety.check_number("steps", steps, 1)
    shipped = name.split(":", 1)[1] if name.startswith("zoo:") else name
    dataset = name.split(":", 1)[1] if name.startswith("oracle:") else shipped.split("/")[0]
    if name.startswith("oracle:") or (shipped == f"{dataset}/teacher" and dataset in DATASETS
                                       and get_family(dataset).has_oracle(dataset)):
        return get_family(dataset).teacher_sampler(f"oracle:{dataset}", steps=steps, cfg=cfg, name=name)
    path = Path(shipped) if Path(shipped).is_dir() else assets / shipped
    if not path.is_dir():
        raise ValueError(f"unknown model {name!r}: not a folder and not a shipped model "
                         f"({', '.join(list_models(assets))})")
    cfg_ = io.read_config(path)
    kind = cfg_.get("kind")
    if kind == "student":
        if strict and (steps is not None or cfg is not None):
            raise ValueError(f"{name!r} is a distilled student: its steps and CFG are fixed at training "
                             f"(--steps/--cfg apply to teachers only)")
        return Student.load(path)
    family = _folder_family(cfg_)
    if family is not None and kind == family.teacher_kind:
        return family.teacher_sampler(str(path), steps=steps, cfg=cfg, name=name)
    if kind in BACKBONE_STUDENTS:  # students of diffusers backbones: they sample latents
        if strict and (steps is not None or cfg is not None):
            raise ValueError(f"{name!r} is a distilled student: its steps and CFG are fixed at training "
                             f"(--steps/--cfg apply to teachers only)")
        return io.load_folder(path)
    raise ValueError(f"{name!r} is a {kind!r} folder, not a teacher or a student")


BACKBONE_STUDENTS = ("lora-student", "backbone-student")  # LoRA and full-weight students of diffusers models


def samples_latents(model) -> bool:
    """True for models whose samples are latents of a diffusers backbone (classes are prompts), which the
    kit writes as tensors; decoding them needs the pipeline's VAE."""
    return getattr(model, "dataset", "") == "prompts"


def _lists_teacher(dataset: str) -> bool:
    try:
        return get_family(dataset).lists_teacher(dataset)
    except ValueError:  # a dataset of a kind no family claims: nothing to list
        return False


def _folder_family(cfg: dict):
    """The family of a model folder's config (by its ``dataset``), or None."""
    try:
        return get_family(cfg["dataset"]) if cfg.get("dataset") in DATASETS else None
    except ValueError:
        return None


def _valid(path: Path, entry: Entry) -> bool:
    try:
        cfg = io.read_config(path)
    except ValueError:
        return False
    kinds = {entry.kind} | ({get_family(entry.args["data"]).teacher_kind} if entry.kind == "teacher" else set())
    kinds |= {entry.args["writes"]} if entry.kind == "derived" else set()
    if cfg.get("kind") not in kinds:
        return False
    return entry.kind != "student" or bool(cfg.get("complete"))


def _export(run: Path, dest: Path, extra: dict) -> None:
    """Copy a run's model (config + safetensors, no train state or log) into ``assets``, atomically."""
    with io.atomic_folder(dest) as tmp:
        for f in run.glob("*.safetensors"):
            shutil.copy2(f, tmp / f.name)
        cfg = io.read_config(run)
        io.write_json(tmp / "config.json", {**cfg, **extra})
        for f in [tmp, *tmp.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)


def build_zoo(assets: Path = ASSETS, runs: Path = RUNS, *, only: str | None = None, progress: bool = True) -> list[str]:
    """Rebuild every shipped model from nothing: ``pdmd-lab build-zoo`` / ``make zoo``.

    Resumable: a model already exported and valid is skipped, and an interrupted training resumes
    from its run folder under ``runs``. Returns the names built in this call.
    """
    from pdmd_lab.distill import DistillConfig, distill
    from pdmd_lab.embed import ClassifierConfig, train_classifier

    built = []
    entries = [e for e in ENTRIES if only is None or only in e.name]
    for e in tqdm(entries, desc="zoo", disable=not progress):
        dest = assets / e.name
        if _valid(dest, e):
            continue
        run = runs / e.name
        t0 = time.time()
        cmd = f"pdmd-lab build-zoo --only {e.name}"
        if e.kind == "teacher":  # the dataset's family trains it
            family = get_family(e.args["data"])
            family.train_teacher(family.teacher_config(**e.args), run, command=cmd, progress=progress)
        elif e.kind == "classifier":
            if not _valid(run, e):
                train_classifier(ClassifierConfig(**e.args), run, progress=progress)
        elif e.kind == "derived":  # written from another shipped model by a named function, no training
            if not _valid(run, e):
                module, func = e.args["builder"].split(":")
                getattr(importlib.import_module(module), func)(assets / e.args["source"], run)
        else:
            distill(DistillConfig.from_flat(**e.args), run, progress=progress, command=cmd)
        _export(run, dest, {"zoo_name": e.name, "build_command": cmd, "build_wall_time_s": round(time.time() - t0, 1)})
        built.append(e.name)
    return built

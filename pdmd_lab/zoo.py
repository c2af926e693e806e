"""The shipped models in ``assets/``, loaded by name, and the one command that rebuilds them.

Names are ``<family>/<model>``: ``mnist/teacher``, ``mnist/phased-dmd-4s4p``, ``ring-mix/dmd-1s``...
A teacher name gives a :class:`~pdmd_lab.student.TeacherSampler` (50 Euler steps with CFG by default;
``ring-mix/teacher`` is the exact oracle), a student name a :class:`~pdmd_lab.student.Student`.
``load`` also takes a folder path or ``oracle:<dataset>``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pdmd_lab import io
from pdmd_lab.data import get_dataset
from pdmd_lab.student import Student, TeacherSampler
from pdmd_lab.teacher import load_teacher

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
RUNS = Path("runs/zoo")
TEACHER_CFG = {"ring-mix": 3.0, "mnist": 3.0}  # CFG of the real score, for teachers and distillation


@dataclass
class Entry:
    """One shipped model and how to build it."""

    name: str
    kind: str  # "teacher" | "classifier" | "student"
    args: dict = field(default_factory=dict)


def _students(family: str, teacher: str, common: dict, overrides: dict | None = None) -> list[Entry]:
    overrides = overrides or {}
    specs = [("phased-dmd-4s4p", "phased-dmd", 4, 4), ("dmd-1s", "dmd", 1, 1), ("dmd2-sgts-4s", "dmd2-sgts", 4, 1),
             ("phased-dmd-4s2p", "phased-dmd", 4, 2), ("dp-dmd-4s", "dp-dmd", 4, 1)]
    return [Entry(f"{family}/{n}", "student", {"teacher": teacher, "method": m, "steps": s, "phases": p,
                                                "cfg": TEACHER_CFG[family], **common, **overrides.get(n, {})})
            for n, m, s, p in specs]


ENTRIES: list[Entry] = [
    *_students("ring-mix", "oracle:ring-mix", {"iters": 600, "batch_size": 256, "lr_generator": 1e-3,
                                               "lr_fake": 1e-3, "fake_updates_per_generator_update": 3}),
    Entry("mnist/teacher", "teacher", {"data": "mnist", "iters": 4500, "batch_size": 64, "lr": 1e-3}),
    Entry("mnist/classifier", "classifier", {"data": "mnist"}),
    *_students("mnist", str(RUNS / "mnist/teacher"), {"iters": 240, "batch_size": 32, "lr_generator": 1e-4,
                                                       "lr_fake": 2e-4, "fake_updates_per_generator_update": 2,
                                                       "weighting": "dmd2", "dp_anchor_steps": 2},
              # DP-DMD backpropagates through all 4 steps (about 3x the cost of the others here):
              # 100 updates to fit this session's CPU budget.
              {"dp-dmd-4s": {"iters": 100}}),
]


def list_models(assets: Path = ASSETS) -> list[str]:
    """Names of the shipped models (teachers of Gaussian-mixture families are oracles, always there)."""
    names = [f"{f}/teacher" for f in TEACHER_CFG if get_dataset(f).gmm is not None]
    if assets.exists():
        names += sorted(str(p.parent.relative_to(assets)) for p in assets.glob("*/*/config.json"))
    return names


def load(name: str, assets: Path = ASSETS, *, steps: int | None = None, cfg: float | None = None):
    """Load a shipped model by name (or a folder, or ``oracle:<dataset>``) as something with ``sample``.

    Teachers come back as :class:`TeacherSampler` with ``steps`` (default 50) and ``cfg`` (default the
    family's); students ignore ``steps`` and ``cfg`` (they have them baked in).
    """
    name = str(name)
    family = name.split("/")[0] if "/" in name else ""
    if name.startswith("oracle:") or (family in TEACHER_CFG and name.endswith("/teacher")
                                       and get_dataset(family).gmm is not None):
        dataset = name.split(":", 1)[1] if name.startswith("oracle:") else family
        teacher = load_teacher(f"oracle:{dataset}")
        return TeacherSampler(teacher, steps=steps or 50, cfg=TEACHER_CFG.get(dataset, 1.0) if cfg is None else cfg,
                              dataset=dataset, shape=get_dataset(dataset).shape, meta={"name": name})
    path = Path(name) if Path(name).is_dir() else assets / name
    if not path.is_dir():
        raise ValueError(f"unknown model {name!r}: not a folder and not a shipped model "
                         f"({', '.join(list_models(assets))})")
    kind = io.read_config(path).get("kind")
    if kind == "student":
        return Student.load(path)
    if kind == "teacher":
        teacher = load_teacher(path)
        ds = get_dataset(teacher.dataset)
        return TeacherSampler(teacher, steps=steps or 50, cfg=TEACHER_CFG.get(ds.name, 1.0) if cfg is None else cfg,
                              dataset=ds.name, shape=ds.shape, meta={"name": name})
    raise ValueError(f"{name!r} is a {kind!r} folder, not a teacher or a student")


def _valid(path: Path, entry: Entry) -> bool:
    try:
        cfg = io.read_config(path)
    except ValueError:
        return False
    if cfg.get("kind") != entry.kind:
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
    from pdmd_lab.teacher import TeacherConfig, train_teacher

    built = []
    entries = [e for e in ENTRIES if only is None or only in e.name]
    for e in tqdm(entries, desc="zoo", disable=not progress):
        dest = assets / e.name
        if _valid(dest, e):
            continue
        run = runs / e.name
        t0 = time.time()
        cmd = f"pdmd-lab build-zoo --only {e.name}"
        if e.kind == "teacher":
            train_teacher(TeacherConfig(**e.args), run, command=cmd, progress=progress)
        elif e.kind == "classifier":
            if not _valid(run, e):
                train_classifier(ClassifierConfig(**e.args), run, progress=progress)
        else:
            distill(DistillConfig(**e.args), run, progress=progress, command=cmd)
        _export(run, dest, {"zoo_name": e.name, "build_command": cmd, "build_wall_time_s": round(time.time() - t0, 1)})
        built.append(e.name)
    return built

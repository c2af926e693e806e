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
from pdmd_lab.recipes import RECIPES, TEACHER_CFG
from pdmd_lab.student import Student, TeacherSampler
from pdmd_lab.teacher import load_teacher

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
RUNS = Path("runs/zoo")


@dataclass
class Entry:
    """One shipped model and the recipe it is built from (:mod:`pdmd_lab.recipes`)."""

    name: str
    kind: str  # "teacher" | "classifier" | "student"
    args: dict = field(default_factory=dict)


ENTRIES: list[Entry] = [Entry(name, r["kind"], {k: v for k, v in r.items() if k != "kind"})
                        for name, r in RECIPES.items() if not name.startswith("study/")]


def resolve(spec: str) -> str:
    """``zoo:<family>/<model>`` -> the shipped folder's path; any other spec unchanged (the one place
    teacher specs' ``zoo:`` prefix is read)."""
    return str(ASSETS / spec.split(":", 1)[1]) if spec.startswith("zoo:") else spec


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
    """Names of the shipped models (teachers of Gaussian-mixture families are oracles, always there)."""
    names = [f"{f}/teacher" for f in TEACHER_CFG if get_dataset(f).gmm is not None]
    if assets.exists():
        names += sorted(str(p.parent.relative_to(assets)) for p in assets.glob("*/*/config.json"))
    return names


def load(name: str, assets: Path = ASSETS, *, steps: int | None = None, cfg: float | None = None,
         strict: bool = False):
    """Load a shipped model by name (or a folder, or ``oracle:<dataset>``; ``name@steps`` for teachers) as a
    :class:`~pdmd_lab.student.Sampler`.

    Teachers come back as :class:`TeacherSampler` with ``steps`` (default 50) and ``cfg`` (default the
    family's). Students have their steps and guidance distilled in: with ``strict``, asking a student for
    ``steps`` or ``cfg`` is an error instead of being ignored.
    """
    name, at_steps = parse_name(name)
    steps = at_steps if steps is None else steps
    from pdmd_lab.discrete.evaluate import masked_spec  # masked-diffusion teachers (pdmd_lab.discrete)

    if (spec := masked_spec(name, assets)) is not None:
        from pdmd_lab.discrete.method import load_masked_sampler

        return load_masked_sampler(spec, steps=steps, cfg=cfg, name=name)
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
        if strict and (steps is not None or cfg is not None):
            raise ValueError(f"{name!r} is a distilled student: its steps and CFG are fixed at training "
                             f"(--steps/--cfg apply to teachers only)")
        return Student.load(path)
    if kind == "teacher":
        teacher = load_teacher(path)
        ds = get_dataset(teacher.dataset)
        return TeacherSampler(teacher, steps=steps or 50, cfg=TEACHER_CFG.get(ds.name, 1.0) if cfg is None else cfg,
                              dataset=ds.name, shape=ds.shape, meta={"name": name})
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


def _valid(path: Path, entry: Entry) -> bool:
    try:
        cfg = io.read_config(path)
    except ValueError:
        return False
    if cfg.get("kind") != entry.kind and not (entry.kind == "teacher" and cfg.get("kind") == "masked-teacher"):
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
        if e.kind == "teacher" and get_dataset(e.args["data"]).kind == "tokens":  # masked diffusion
            from pdmd_lab.discrete.teacher import MaskedTeacherConfig, train_masked_teacher

            train_masked_teacher(MaskedTeacherConfig(**e.args), run, command=cmd, progress=progress)
        elif e.kind == "teacher":
            train_teacher(TeacherConfig(**e.args), run, command=cmd, progress=progress)
        elif e.kind == "classifier":
            if not _valid(run, e):
                train_classifier(ClassifierConfig(**e.args), run, progress=progress)
        else:
            distill(DistillConfig.from_flat(**e.args), run, progress=progress, command=cmd)
        _export(run, dest, {"zoo_name": e.name, "build_command": cmd, "build_wall_time_s": round(time.time() - t0, 1)})
        built.append(e.name)
    return built

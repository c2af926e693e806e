"""What the kit promises about files, options and environment variables, checked before any work starts.

* **Output folders** (:func:`output_folder`) are new, empty, or the same run being resumed. Anything else is
  refused with one line naming what is there, unless ``overwrite``, which replaces only a folder the kit
  itself wrote (recognised by its ``config.json``), never a folder holding other files.
* **Output files** (:func:`output_file`) are not replaced without ``overwrite``; their parent folder is
  created when they are written (:func:`make_parent`).
* Nothing is written inside the installed package (:func:`check_not_in_package`).
* **Options** (:func:`check_args`): every float finite and in range, counts positive; the one table of
  ranges is :data:`RANGES`.
* **Environment variables** the kit reads: :func:`env_threads` (``PDMD_THREADS``), :func:`env_plugins`
  (``PDMD_PLUGINS``) and :func:`env_cache` (``PDMD_CACHE``).

Every check raises ``ValueError`` naming the option; the command line turns it into one line and exit 2.
This module imports nothing of the kit (every layer may use it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# Kinds of folder the kit writes (``config.json`` -> ``kind``). Plug-ins that save their own folders add theirs.
KIT_KINDS = {"teacher", "student", "classifier", "masked-teacher", "lora-student", "backbone-student",
             "teacher-train-state", "masked-teacher-train-state", "distill-train-state"}
# Entries of a kit folder besides config.json: weights, the log, the train state, the kit's temporary files,
# and what evaluate / figures / bench write next to a model.
_KIT_FILES = ("config.json", "log.jsonl", "train_state", "metrics.json", "metrics.md")
_KIT_SUFFIXES = (".safetensors",)
# The weights files the kit names: experts (LoRA adapters of a second transformer too), a model, a train state,
# a prompt table, sampled latents. A .safetensors file of another name is not the kit's.
_KIT_WEIGHTS = re.compile(r"(expert_\d+(_transformer_2)?|model|state|prompt_embeds|latents)\.safetensors")

# What each folder the kit writes is called, for messages.
_DESCRIBE = {"teacher": "a teacher", "student": "a distilled student", "classifier": "a classifier",
             "masked-teacher": "a masked-diffusion teacher", "lora-student": "a LoRA student",
             "backbone-student": "a full-weight backbone student"}


# Folders ---------------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kit_kind(path) -> str | None:
    """The ``kind`` of a folder the kit wrote (its ``config.json``), or None for any other folder."""
    cfg = _read_json(Path(path) / "config.json")
    if isinstance(cfg, dict) and cfg.get("kind") in KIT_KINDS:
        return cfg["kind"]
    return None


def _is_kit_entry(p: Path) -> bool:
    if p.name.startswith(".") and ".tmp" in p.name:  # an interrupted atomic write of the kit
        return True
    if p.name == "train_state":
        return p.is_dir() and kit_kind(p) is not None
    return p.is_file() and (p.name in _KIT_FILES or _KIT_WEIGHTS.fullmatch(p.name) is not None)


def foreign_entries(path) -> list[str]:
    """Names of the entries of ``path`` the kit would not have written there (sorted)."""
    path = Path(path)
    if kit_kind(path) is None:
        if (path / "config.json").exists():  # someone else's config: nothing here is the kit's
            return sorted(p.name for p in path.iterdir())
        # A run stopped before its first checkpoint holds only its log (and temporary files).
        return sorted(p.name for p in path.iterdir() if not (_is_kit_entry(p) and p.suffix not in _KIT_SUFFIXES
                                                             and p.name != "train_state"))
    return sorted(p.name for p in path.iterdir() if not _is_kit_entry(p))


def describe_folder(path) -> str:
    """What a non-empty folder holds, in a few words: ``a distilled student``, ``a diffusers model``..."""
    path = Path(path)
    kind = kit_kind(path)
    if (path / "train_state").is_dir() and kit_kind(path / "train_state"):
        what = kit_kind(path / "train_state").removesuffix("-train-state")
        return f"a {'distillation' if what == 'distill' else what} run"
    if kind is not None:
        return _DESCRIBE.get(kind, f"a {kind} folder")
    cfg = _read_json(path / "config.json")
    if (path / "model_index.json").is_file() or (isinstance(cfg, dict) and "_class_name" in cfg):
        return "a diffusers model"
    names = sorted(p.name for p in path.iterdir())
    if not foreign_entries(path):
        return "the log of a run stopped before its first checkpoint"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def check_not_in_package(path, option: str = "--out") -> None:
    """Refuse a path inside the installed package: the kit never writes there."""
    p = Path(os.path.abspath(path))
    if p == PACKAGE or PACKAGE in p.parents:
        raise ValueError(f"{option} {str(path)!r} is inside the pdmd_lab package; the kit never writes there "
                         f"(default outputs go under ./runs/)")


def _check_writable(path: Path, option: str, *, is_file: bool = False) -> None:
    """The nearest existing ancestor of ``path`` (of its folder, for a file) must be a folder we may write into."""
    p = Path(os.path.abspath(path))
    for a in ([] if is_file else [p]) + list(p.parents):
        if a.exists():
            if not a.is_dir():
                raise ValueError(f"{option} {str(path)!r}: {str(a)!r} is a file, not a folder")
            if not os.access(a, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {str(path)!r}: {str(a)!r} is not writable")
            return


def _nonempty_path(path, option: str) -> Path:
    if path is None or str(path).strip() == "":
        raise ValueError(f"{option} must name a folder or file, got an empty string")
    return Path(path)


def output_folder(path, *, option: str = "--out", resume: bool = False, run_kind: str | None = None,
                  overwrite: bool = False, resume_hint: str | None = None) -> Path:
    """Check an output folder before any work: new, empty, or (``resume``) a run of ``run_kind``.

    ``run_kind`` is the train-state kind of a resumable run (``distill-train-state``...); ``resume_hint``
    is the flag that resumes it (named in the refusal). With ``overwrite``, a folder the kit wrote is
    emptied of the kit's files and reused; a folder with anything else in it is refused. Returns the path.
    """
    path = _nonempty_path(path, option)
    check_not_in_package(path, option)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is an existing file, not a folder")
    _check_writable(path, option)
    empty = not path.exists() or not any(path.iterdir())
    state = path / "train_state"
    is_run = run_kind is not None and state.is_dir() and kit_kind(state) == run_kind
    if resume:
        if not is_run:
            raise ValueError(f"--resume: {str(path)!r} holds no run to resume"
                             + ("" if empty else f" (it holds {describe_folder(path)})"))
        return path
    if empty:
        return path
    if overwrite:
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ValueError(f"{option} {str(path)!r} holds files the kit did not write ({shown}); --overwrite "
                             f"replaces only a folder the kit wrote")
        clear_kit_folder(path)
        return path
    hint = f"pass {resume_hint} to continue it, " if is_run and resume_hint else ""
    raise ValueError(f"{option} {str(path)!r} is not empty: it holds {describe_folder(path)}; {hint}choose a new or "
                     f"empty folder{', or pass --overwrite to replace it' if not foreign_entries(path) else ''}")


def run_folder(path, run_kind: str, *, restart: bool = False, overwrite: bool = False,
               option: str = "--out") -> Path:
    """The folder of a command that continues its own run by default (``train-teacher``): a run of
    ``run_kind`` there is resumed unless ``restart`` / ``overwrite`` (which replace it, as
    :func:`output_folder` does); anything else follows :func:`output_folder`."""
    p = _nonempty_path(path, option)
    state = p / "train_state"
    if not (restart or overwrite) and state.is_dir() and kit_kind(state) == run_kind:
        return output_folder(p, resume=True, run_kind=run_kind, option=option)
    return output_folder(p, overwrite=overwrite or restart, run_kind=run_kind, option=option)


def clear_kit_folder(path) -> None:
    """Remove the kit's own entries of a kit folder (only those; :func:`output_folder` checked there are no
    others)."""
    path = Path(path)
    foreign = set(foreign_entries(path))
    for p in path.iterdir():
        if p.name in foreign:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def output_file(path, *, option: str = "--out", overwrite: bool = False,
                suffixes: tuple[str, ...] | None = None) -> Path:
    """Check an output file before any work: not an existing file unless ``overwrite``, never a folder,
    a known suffix, a writable place, outside the package. The parent is created by :func:`make_parent`."""
    path = _nonempty_path(path, option)
    check_not_in_package(path, option)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {str(path)!r}: the file name must end in one of {', '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is an existing folder, not a file")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {str(path)!r} already exists; pass --overwrite to replace it")
    _check_writable(path, option, is_file=True)
    return path


def output_files(folder, names, *, option: str = "--out", overwrite: bool = False) -> list[Path]:
    """:func:`output_file` for each of ``names`` inside ``folder`` (which may exist and hold other files)."""
    folder = _nonempty_path(folder, option)
    check_not_in_package(folder, option)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {str(folder)!r} is an existing file, not a folder")
    return [output_file(folder / n, option=option, overwrite=overwrite) for n in names]


def make_parent(path) -> Path:
    """Create the folder a file is about to be written into."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


# Options -----------------------------------------------------------------------------------------------

# dest -> (low, high, low inclusive); None: no bound. Every int or float option of every subcommand with
# one of these names is checked by :func:`check_args`.
RANGES: dict[str, tuple] = {
    # counts
    **{k: (1, None, True) for k in ("n", "iters", "batch_size", "steps", "jobs", "checkpoint_every", "init_iters",
                                    "fake_updates_per_generator_update", "n_points", "threads", "phases",
                                    "log_every")},
    **{k: (0, None, True) for k in ("seed", "label")},
    # rates and scales
    **{k: (0, None, False) for k in ("lr", "lr_generator", "lr_fake", "grad_clip", "shift")},
    **{k: (0, None, True) for k in ("cfg", "backbone_guidance")},
}


def flag(dest: str) -> str:
    """``batch_size`` -> ``--batch-size`` (backbone options keep their flag name)."""
    return "--" + dest.removeprefix("backbone_").replace("_", "-")


def check_number(name: str, value, low=None, high=None, low_inclusive: bool = True) -> None:
    """One number: finite, and within ``[low, high]`` (or ``(low, high]``)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def check_args(args) -> None:
    """Every parsed option: floats finite, and each name in :data:`RANGES` within its range."""
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high, inclusive = RANGES.get(dest, (None, None, True))
        if dest == "fake_updates_per_generator_update":
            name = "--fake-updates"
        elif dest == "lr_generator":
            name = "--lr-generator"
        else:
            name = flag(dest)
        check_number(name, value, low, high, inclusive)


def check_finite_tree(obj, where: str) -> None:
    """Every float in a (nested) dict / list is finite; the message names its key (``options.noise_gain``)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where} must be a finite number, got {obj}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite_tree(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite_tree(v, f"{where}[{i}]")


def check_field_types(obj) -> None:
    """A dataclass's ``int`` / ``float`` / ``str`` / ``bool`` fields hold such values (a recipe, a JSON file
    or ``--set KEY=VALUE`` may hand over anything)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        v, t = getattr(obj, f.name), str(f.type)
        if t == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{f.name} must be an integer, got {v!r}")
        if t == "float" and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{f.name} must be a number, got {v!r}")
        if t == "str" and not isinstance(v, str):
            raise ValueError(f"{f.name} must be a string, got {v!r}")
        if t == "bool" and not isinstance(v, bool):
            raise ValueError(f"{f.name} must be true or false, got {v!r}")


def check_label(label, num_classes: int, option: str = "--label") -> None:
    if label is not None and not 0 <= label < num_classes:
        raise ValueError(f"{option} must be in [0, {num_classes - 1}] (the family's classes), got {label}")


# Environment variables -------------------------------------------------------------------------------

def env_threads() -> int | None:
    """``$PDMD_THREADS``: a positive integer, or None when unset or empty."""
    raw = os.environ.get("PDMD_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"PDMD_THREADS must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"PDMD_THREADS must be a positive integer, got {raw!r}")
    return n


def env_plugins() -> list[str]:
    """``$PDMD_PLUGINS``: comma-separated module names (each a dotted Python identifier)."""
    names = [n.strip() for n in os.environ.get("PDMD_PLUGINS", "").split(",") if n.strip()]
    for n in names:
        if not all(part.isidentifier() for part in n.split(".")):
            raise ValueError(f"PDMD_PLUGINS holds {n!r}, which is not a module name (comma-separated modules, "
                             f"e.g. my_pkg.methods)")
    return names


def env_cache() -> Path:
    """``$PDMD_CACHE`` (a folder; default ``~/.cache/pdmd_lab``): not an existing file, not inside the package."""
    raw = os.environ.get("PDMD_CACHE")
    if raw is None or raw.strip() == "":
        return Path.home() / ".cache" / "pdmd_lab"
    p = Path(raw).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"PDMD_CACHE {raw!r} is an existing file, not a folder")
    check_not_in_package(p, "PDMD_CACHE")
    return p


def check_environment() -> None:
    """Every environment variable the kit reads, at once (the command line calls it before anything)."""
    env_threads()
    env_plugins()
    env_cache()

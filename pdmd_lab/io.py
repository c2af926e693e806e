"""Checkpoint folders: ``config.json`` plus safetensors files, written atomically.

A folder is written under a temporary name beside its destination and renamed into place, so an
interrupted write never leaves a half-written checkpoint; the previous one is replaced only once
the new one is complete. Weights are safetensors only (never pickle). Optimizer states are
flattened into tensors (safetensors) plus their JSON-able structure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG = "config.json"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"  # the shipped models (pdmd_lab.zoo)


def resolve(spec) -> str:
    """``zoo:<dataset>/<model>`` -> the shipped folder's path; any other spec unchanged (the one place a
    spec's ``zoo:`` prefix is read; :func:`pdmd_lab.zoo.resolve` is this function)."""
    spec = str(spec)
    return str(ASSETS / spec.split(":", 1)[1]) if spec.startswith("zoo:") else spec


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary folder; on success it replaces ``path`` in one rename (old one removed after).

    Only an empty folder or one the kit wrote (:func:`pdmd_lab.safety.kit_kind`, nothing else in it) is
    replaced: a file, or a folder holding anything else, raises ValueError before anything is written.
    """
    from pdmd_lab import safety

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is an existing file; the kit does not replace it with a folder")
    if path.is_dir() and any(path.iterdir()) and safety.foreign_entries(path):
        raise ValueError(f"{str(path)!r} holds {safety.describe_folder(path)}, which the kit did not write; "
                         f"it is left as it is")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def json_ready(obj):
    """A dataclass or dict as plain JSON types (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_folder(path, config: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``config.json`` and one ``NAME.safetensors`` per entry of ``tensors``, atomically."""
    with atomic_folder(path) as tmp:
        for name, state in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        write_json(tmp / CONFIG, config)
    return Path(path)


def save_model_files(path, config: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``NAME.safetensors`` files and then ``config.json`` into an existing folder, each file atomically.

    Used for a run folder that also holds a log and a ``train_state/`` subfolder.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, state in tensors.items():
        tmp = path / f".{name}.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        os.replace(tmp, path / f"{name}.safetensors")
    write_json(path / CONFIG, config)
    return path


def read_config(path) -> dict:
    """The ``config.json`` of a checkpoint folder; missing or corrupt folders raise ValueError."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {str(path)!r} does not exist")
    cfg = path / CONFIG
    if not cfg.is_file():
        raise ValueError(f"{str(path)!r} is not a checkpoint folder: no {CONFIG}")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {cfg}: {e}") from None


def read_tensors(path, name: str) -> dict[str, torch.Tensor]:
    """Load ``NAME.safetensors`` from a checkpoint folder; missing or corrupt files raise ValueError."""
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise ValueError(f"checkpoint {str(path)!r} has no {f.name}")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, Exception) as e:  # safetensors raises several types on corruption
        raise ValueError(f"corrupt weights file {f}: {e}") from None


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with a one-line error when the weights do not fit the config."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(x.strip() for x in first[:3])
        raise ValueError(f"weights in {where} do not match its config: {detail[:300]}") from None


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON (param groups, scalar state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str) -> None:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith(prefix + "."):  # other tensors of the same file (weights named "net.pos_emb"...)
            continue
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# One loader for every folder kind ----------------------------------------------------------------
# A model folder is ``config.json`` (with ``kind``) plus safetensors files, in the spirit of diffusers'
# ``save_pretrained`` / ``from_pretrained``. Each kind registers how it is rebuilt; ``load_folder``
# reads the config once and dispatches, so teachers, students, classifiers and adapters share one path.
LOADERS: dict = {}


def register_kind(kind: str, loader) -> None:
    """``loader(path, config, device)`` rebuilds a folder whose config says ``kind``."""
    LOADERS[kind] = loader


def load_folder(path, *, device="cpu", kinds: tuple[str, ...] | None = None):
    """Load any model folder of this kit by its ``kind``; ``kinds`` restricts what is accepted."""
    cfg = read_config(path)
    kind = cfg.get("kind")
    if kinds is not None and kind not in kinds:
        want = " or ".join(kinds)
        raise ValueError(f"{str(path)!r} is not a {want} folder (its config says kind={kind!r})")
    if kind not in LOADERS:
        _import_loaders()
    if kind not in LOADERS:
        raise ValueError(f"{str(path)!r} holds an unknown kind {kind!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[kind](path, cfg, device)


def _import_loaders() -> None:
    """Import the modules that register the kit's kinds (they register on import)."""
    import importlib

    for mod in ("pdmd_lab.student", "pdmd_lab.teacher", "pdmd_lab.embed", "pdmd_lab.discrete",
                "pdmd_lab.backbones"):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def save_weights_file(path, state: dict[str, torch.Tensor]) -> None:
    """Write one safetensors file atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def truncate_log(path, last_iter: int) -> None:
    """Keep the records of a ``log.jsonl`` up to iteration ``last_iter`` (where a resumed run restarts), so
    every iteration is logged once; the file is rewritten atomically, and only when something is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(rec, dict) or rec.get("iter", 0) <= last_iter:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)

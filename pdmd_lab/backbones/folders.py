"""Where a diffusers model lives on disk: a pipeline folder (``model_index.json``) or a bare transformer folder.

The lowest layer of :mod:`pdmd_lab.backbones` (prompts and adapters both find models through it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelFolder:
    """Where a diffusers model lives: a pipeline folder (``model_index.json``) or a transformer folder."""

    root: Path
    model_class: str
    subfolder: str | None  # "transformer" inside a pipeline folder, None for a bare transformer folder
    subfolder_2: str | None = None  # Wan2.2: "transformer_2"
    boundary_ratio: float | None = None
    is_pipeline: bool = False


def find_model(path) -> ModelFolder:
    """Locate the transformer in ``path``; a folder without one raises a one-line ValueError."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"model folder {str(root)!r} does not exist")
    index = root / "model_index.json"
    if index.is_file():
        spec = json.loads(index.read_text())
        entry = spec.get("transformer")
        if not entry or entry[1] is None or not (root / "transformer" / "config.json").is_file():
            raise ValueError(f"pipeline folder {str(root)!r} holds no transformer (no transformer/config.json)")
        folder = ModelFolder(root, entry[1], "transformer", is_pipeline=True)
        entry2 = spec.get("transformer_2")
        if entry2 and entry2[1] is not None and (root / "transformer_2" / "config.json").is_file():
            folder.subfolder_2 = "transformer_2"
            folder.boundary_ratio = spec.get("boundary_ratio")
        return folder
    cfg = root / "config.json"
    if cfg.is_file():
        try:
            name = json.loads(cfg.read_text()).get("_class_name")
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt {cfg}: {e}") from None
        if name:
            return ModelFolder(root, name, None)
    raise ValueError(f"{str(root)!r} holds no diffusers model (no model_index.json, no config.json with _class_name)")

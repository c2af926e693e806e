"""Masked-diffusion evaluation now goes through the tokens family (:mod:`pdmd_lab.families.tokens`,
``pdmd-lab evaluate`` / :func:`pdmd_lab.evaluate.evaluate_models`). :func:`masked_spec` and
:data:`FULL_STEPS` are kept for callers that have not moved to the family yet.
"""

from __future__ import annotations

from pathlib import Path

from pdmd_lab import io
from pdmd_lab.families.tokens import FULL_STEPS, sample_with_entropy  # noqa: F401


def masked_spec(name: str, assets: Path | None = None) -> str | None:
    """The masked-teacher spec a model name stands for, or None: ``oracle:<token dataset>``,
    ``<token dataset>/teacher`` of a dataset with an oracle, or a folder (or zoo name, with or without
    ``zoo:``) of kind masked-teacher."""
    from pdmd_lab.discrete.teacher import KIND, ORACLES

    name = str(name)
    if name.startswith("oracle:"):
        return name if name.split(":", 1)[1] in ORACLES else None
    if name.startswith("zoo:"):  # the shipped teacher a student names as its teacher
        name = name.split(":", 1)[1]
    family, _, rest = name.partition("/")
    if rest == "teacher" and family in ORACLES:
        return f"oracle:{family}"
    for path in (Path(name), (assets / name) if assets is not None else None):
        if path is not None and (path / "config.json").is_file():
            try:
                return str(path) if io.read_config(path).get("kind") == KIND else None
            except ValueError:
                return None
    return None

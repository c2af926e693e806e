"""``pdmd-lab evaluate`` for students of diffusers backbones (LoRA and full-weight): their latents.

The kit does not decode here (decoding needs the pipeline's VAE: ``pdmd-lab diversity``). Each model
samples ``n`` latents with the same seed, prompts taken in turn; the table gives what latents show without
decoding: NFE, sampling time, whether every value is finite, the latents' mean and standard deviation, and
the mean pairwise distance between samples of one prompt (0 = every seed gave the same latent). With
``out``, ``latents.safetensors`` (``<k>.samples`` and ``<k>.labels`` for the k-th model, names in its
metadata), ``metrics.json`` and ``metrics.md`` are written there.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from pdmd_lab import io, safety, zoo
from pdmd_lab.families import get_family


def is_latent_model(name: str) -> bool:
    """A folder holding a LoRA or full-weight student of a diffusers backbone."""
    p = Path(str(name))
    return (p / io.CONFIG).is_file() and safety.kit_kind(p) in zoo.BACKBONE_STUDENTS


def evaluate_latents(names: list[str], *, n: int = 16, seed: int = 0, out=None) -> dict:
    """Sample every backbone student in ``names`` (``n`` latents, same seed) and describe the latents: the
    latents family does it (:meth:`pdmd_lab.families.latents.LatentsFamily.evaluate`)."""
    models = {}
    for name in names:
        model = zoo.load(name)
        if not zoo.samples_latents(model):
            raise ValueError(f"{name!r} is not a student of a diffusers backbone; evaluate it apart from them")
        models[name] = model
    result = get_family("latents").evaluate(models, n=n, seed=seed, load=zoo.load)
    samples = result.pop("samples")
    tensors = {}
    for k, name in enumerate(names):
        tensors[f"{k}.samples"], tensors[f"{k}.labels"] = samples[name]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".latents.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"models": json.dumps(names)})
        tmp.replace(out / "latents.safetensors")
        io.write_json(out / "metrics.json", result)
        (out / "metrics.md").write_text(markdown_table(result) + "\n")
    return result


def markdown_table(result: dict) -> str:
    return get_family("latents").markdown_table(result)

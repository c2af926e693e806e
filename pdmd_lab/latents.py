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
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from pdmd_lab import io, safety, zoo


def is_latent_model(name: str) -> bool:
    """A folder holding a LoRA or full-weight student of a diffusers backbone."""
    p = Path(str(name))
    return (p / io.CONFIG).is_file() and safety.kit_kind(p) in zoo.BACKBONE_STUDENTS


def _within_prompt_distance(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise L2 distance between latents of the same prompt, averaged over prompts with >= 2."""
    values = []
    for c in labels.unique():
        f = x[labels == c].flatten(1).double()
        if len(f) >= 2:
            d = torch.cdist(f, f)
            values.append(float(d.sum() / (len(f) * (len(f) - 1))))
    return sum(values) / len(values) if values else float("nan")


def evaluate_latents(names: list[str], *, n: int = 16, seed: int = 0, out=None) -> dict:
    """Sample every backbone student in ``names`` (``n`` latents, same seed) and describe the latents."""
    rows, tensors = {}, {}
    for k, name in enumerate(names):
        model = zoo.load(name)
        if not zoo.samples_latents(model):
            raise ValueError(f"{name!r} is not a student of a diffusers backbone; evaluate it apart from them")
        labels = torch.arange(n) % model.num_classes
        t0 = time.time()
        with torch.no_grad():
            x = model.sample(labels, seed=seed).float().cpu()
        finite = bool(torch.isfinite(x).all())
        rows[name] = {"nfe": int(model.nfe), "shape": list(x.shape[1:]), "finite": finite,
                      "mean": float(x.mean()) if finite else float("nan"),
                      "std": float(x.std()) if finite and x.numel() > 1 else float("nan"),
                      "within_prompt_distance": _within_prompt_distance(x, labels) if finite else float("nan"),
                      "sample_s": round(time.time() - t0, 3)}
        tensors[f"{k}.samples"], tensors[f"{k}.labels"] = x.contiguous(), labels
    result = {"n": n, "seed": seed, "rows": rows,
              "note": "latents, not decoded (decoding needs the pipeline's VAE: pdmd-lab diversity)"}
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
    lines = [f"latents of {result['n']} samples, seed {result['seed']} ({result['note']})", "",
             "| model | NFE | latent shape | finite | mean | std | within-prompt distance | sampling s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['nfe']} | {'x'.join(map(str, r['shape']))} | {'yes' if r['finite'] else 'NO'} "
                     f"| {r['mean']:.3f} | {r['std']:.3f} | {r['within_prompt_distance']:.3f} | {r['sample_s']} |")
    return "\n".join(lines)

"""``latents``: the latents of a diffusers backbone (SD3, Flux, Wan, Qwen-Image), sampled by its distilled
students (LoRA adapters or full-weight experts, :mod:`pdmd_lab.backbones.students`).

* no dataset entry: the shape (the backbone's latent shape) and the classes (the prompts, from the student's
  prompt table) are the model's; the models name their dataset ``"prompts"``.
* prior: Gaussian noise of the model's latent shape; sampler: Euler; teachers are ``diffusers:PATH`` specs.
* no oracle; nothing is decoded here (decoding needs the pipeline's VAE: ``pdmd-lab sample`` and
  ``pdmd-lab diversity`` decode with it), so a panel of raw latents is refused.
* evaluation (``pdmd-lab evaluate`` on backbone students): what latents show without decoding: NFE, sampling
  time, whether every value is finite, mean and standard deviation, and the mean pairwise distance between
  samples of one prompt (0 = every seed gave the same latent).
"""

from __future__ import annotations

import time

import torch

from pdmd_lab.families.base import Family, Metric, register_family

NOTE = "latents, not decoded (decoding needs the pipeline's VAE: pdmd-lab diversity)"


def within_prompt_distance(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise L2 distance between latents of the same prompt, averaged over prompts with >= 2."""
    values = []
    for c in labels.unique():
        f = x[labels == c].flatten(1).double()
        if len(f) >= 2:
            d = torch.cdist(f, f)
            values.append(float(d.sum() / (len(f) * (len(f) - 1))))
    return sum(values) / len(values) if values else float("nan")


@register_family
class LatentsFamily(Family):
    name = "latents"
    description = "latents of a diffusers backbone (prompts as classes; shape and prompts from the model)"
    unregistered_datasets = ("prompts",)
    samplers = ("euler",)
    teacher_kind = "diffusers"  # teachers are diffusers:PATH specs, not kit folders
    model_kinds = ("lora-student", "backbone-student")
    metrics = (
        Metric("nfe", "NFE", None, "network evaluations per sample"),
        Metric("shape", "latent shape", None, "one latent's shape"),
        Metric("finite", "finite", None, "whether every value is finite"),
        Metric("mean", "mean", None, "mean of the latents"),
        Metric("std", "std", None, "standard deviation of the latents"),
        Metric("within_prompt_distance", "within-prompt distance", False,
               "mean pairwise L2 distance between samples of one prompt (0: every seed gave the same latent)"),
        Metric("sample_s", "sampling s", True, "wall time of sampling"),
    )

    def dataset(self, dataset):
        raise ValueError("backbone latents have no dataset entry: their shape and prompts are the model's")

    def render_panel(self, x, labels=None, *, dataset, ax=None, title=None):
        raise ValueError("latents are drawn decoded: pdmd-lab sample decodes them with the pipeline's VAE")

    def evaluate(self, models, *, n, seed=0, batch_size=None, reference=None, load=None, progress=True):
        """Sample every model (``n`` latents, prompts in turn, the same seed) and describe the latents.
        ``result["samples"]`` holds ``(latents, labels)`` per row, for the caller to save."""
        rows, samples = {}, {}
        for name, model in models.items():
            labels = torch.arange(n) % model.num_classes
            t0 = time.time()
            with torch.no_grad():
                x = model.sample(labels, seed=seed).float().cpu()
            finite = bool(torch.isfinite(x).all())
            rows[name] = {"nfe": int(model.nfe), "shape": list(x.shape[1:]), "finite": finite,
                          "mean": float(x.mean()) if finite else float("nan"),
                          "std": float(x.std()) if finite and x.numel() > 1 else float("nan"),
                          "within_prompt_distance": within_prompt_distance(x, labels) if finite else float("nan"),
                          "sample_s": round(time.time() - t0, 3)}
            samples[name] = (x.contiguous(), labels)
        return {"n": n, "seed": seed, "rows": rows, "note": NOTE, "samples": samples}

    def markdown_table(self, result: dict) -> str:
        lines = [f"latents of {result['n']} samples, seed {result['seed']} ({result['note']})", "",
                 "| model | " + " | ".join(m.label for m in self.metrics) + " |",
                 "| --- " * (len(self.metrics) + 1) + "|"]
        for name, r in result["rows"].items():
            lines.append(f"| {name} | {r['nfe']} | {'x'.join(map(str, r['shape']))} | {'yes' if r['finite'] else 'NO'} "
                         f"| {r['mean']:.3f} | {r['std']:.3f} | {r['within_prompt_distance']:.3f} | {r['sample_s']} |")
        return "\n".join(lines)

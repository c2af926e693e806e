"""``mnist-uncond``: collapse counted on images, with digits as modes.

The shipped MNIST teacher was trained with label dropout (10% of labels replaced by the null class
``10``), so with the null label and CFG off it is an unconditional MNIST teacher; no training is
needed. It is learned, not exact: its digit histogram is measured (:func:`measure`), not assumed
uniform. Students are distilled from it unconditionally (every batch carries the null label, teacher
spec ``uncond:zoo:mnist/teacher``, CFG 1) and counted the same way:

* the histogram of digits predicted by the shipped classifier over ``n`` samples;
* ``KL(p_teacher || p_model)`` with both histograms smoothed by adding :data:`SMOOTHING` to every
  count before normalising (additive, Laplace-style; a digit a model never draws gives a finite but
  large term);
* digits covered: a digit is covered when the model draws it at least ``COVER_SHARE`` (one half) of
  the teacher's share;
* beside them, the Frechet distance of classifier features and recall (PRDC, k = 5) against the
  teacher's samples.

Stacked MNIST (Metz et al. 2017; PacGAN, Lin et al. 2018) counts jointly generated digit triples;
triples of independent samples add nothing to this histogram, so those numbers are not comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pdmd_lab import metrics

NULL_LABEL = 10  # the MNIST teacher's null class (label dropout)
NUM_DIGITS = 10
SMOOTHING = 1.0  # pseudo-count added to every digit's count before the KL
COVER_SHARE = 0.5  # a digit is covered at >= half the teacher's share
PRDC_K = 5
TEACHER = "zoo:mnist/teacher"
REFERENCE_SEED = 10_000  # the teacher's reference samples use this seed; rows use their own


# Sampling --------------------------------------------------------------------------------------

@torch.no_grad()
def sample_unconditional(model, n: int, seed: int = 0, batch_size: int = 250, progress: bool = False) -> torch.Tensor:
    """``n`` samples of ``model`` with the null label, in batches with noise seeded by ``(seed, batch)``."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for b, i in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="sample")):
        m = min(batch_size, n - i)
        z = torch.randn((m, *model.shape), generator=torch.Generator().manual_seed(int(seed) * 7919 + b))
        out.append(model.sample(torch.full((m,), NULL_LABEL), seed=int(seed) + b, noise=z).float().cpu())
    return torch.cat(out)


# Counting --------------------------------------------------------------------------------------

def digit_counts(pred: torch.Tensor) -> np.ndarray:
    """Counts of predicted digits ``(10,)``."""
    return np.bincount(np.asarray(pred, dtype=np.int64).reshape(-1), minlength=NUM_DIGITS)[:NUM_DIGITS]


def smoothed(counts, smoothing: float = SMOOTHING) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64) + smoothing
    return c / c.sum()


def kl_teacher_model(teacher_counts, model_counts, smoothing: float = SMOOTHING) -> float:
    """``KL(p_teacher || p_model)`` of digit histograms, each count plus ``smoothing`` before normalising."""
    p, q = smoothed(teacher_counts, smoothing), smoothed(model_counts, smoothing)
    return float((p * np.log(p / q)).sum())


def digits_covered(teacher_counts, model_counts, share: float = COVER_SHARE) -> np.ndarray:
    """Boolean ``(10,)``: the model's share of each digit is at least ``share`` times the teacher's."""
    p = np.asarray(teacher_counts, np.float64) / max(1, np.sum(teacher_counts))
    q = np.asarray(model_counts, np.float64) / max(1, np.sum(model_counts))
    return q >= share * p


def count_scores(teacher_counts, model_counts) -> dict:
    """The counting metrics of one model against the teacher's histogram."""
    cov = digits_covered(teacher_counts, model_counts)
    n = max(1, int(np.sum(model_counts)))
    return {"digit_kl": kl_teacher_model(teacher_counts, model_counts), "digits_covered": int(cov.sum()),
            "digits_missed": [int(d) for d in np.nonzero(~cov)[0]],
            "histogram": [round(float(c) / n, 5) for c in model_counts],
            "max_share": float(np.max(model_counts)) / n}


def score(x: torch.Tensor, classifier, ref_feats: torch.Tensor, ref_counts) -> dict:
    """Counting metrics plus Frechet distance and recall (classifier features) against the teacher's samples."""
    from pdmd_lab.embed import embed

    feats = embed(classifier, x)
    counts = digit_counts(classifier.predict(x))
    return {**count_scores(ref_counts, counts), "frechet_distance": metrics.frechet_distance(feats, ref_feats),
            "recall": metrics.prdc(ref_feats, feats, k=PRDC_K)["recall"], "n": len(x)}


# The teacher ----------------------------------------------------------------------------------------

def export_teacher(source, dest) -> Path:
    """Write the unconditional teacher folder ``dest`` from the conditional teacher folder ``source``: the
    same weights (under ``net.``) in a :class:`~pdmd_lab.nets.NullLabelDenoiser` of dataset ``mnist-uncond``.
    ``dest`` must not exist (nothing is replaced). The shipped ``mnist-uncond/teacher`` is
    ``export_teacher("assets/models/mnist/teacher", "assets/models/mnist-uncond/teacher")``."""
    from pdmd_lab import io

    source, dest = Path(source), Path(dest)
    cfg = io.read_config(source)
    if cfg.get("kind") != "teacher" or cfg.get("dataset") != "mnist":
        raise ValueError(f"{str(source)!r} is not an MNIST teacher folder (kind={cfg.get('kind')!r}, "
                         f"dataset={cfg.get('dataset')!r})")
    if dest.exists():
        raise ValueError(f"{str(dest)!r} already exists; choose another destination")
    tensors = {f"net.{k}": v for k, v in io.read_tensors(source, "model").items()}
    meta = {"kind": "teacher", "dataset": "mnist-uncond",
            "net": {"type": "null-label", "base": cfg["net"], "num_classes": 1},
            "derived_from": {"folder": source.name if source.name != "teacher" else "mnist/teacher",
                             "iters": cfg.get("iters"), "train": cfg.get("train")},
            "command": f"python -c \"from pdmd_lab.uncond import export_teacher; "
                       f"export_teacher('{source}', '{dest}')\""}
    io.save_model_files(dest, meta, {"model": tensors})
    return dest


# The teacher's measurement -----------------------------------------------------------------------

def load_teacher_sampler(steps: int = 50):
    """The shipped MNIST teacher as an unconditional sampler (null label, CFG 1): ``mnist-uncond/teacher``
    gives the same velocity through :class:`~pdmd_lab.nets.NullLabelDenoiser`."""
    from pdmd_lab import zoo

    return zoo.load("mnist/teacher", steps=steps, cfg=1.0)


def load_mnist_classifier():
    from pdmd_lab import zoo
    from pdmd_lab.embed import load_classifier

    return load_classifier(zoo.ASSETS / "mnist" / "classifier")


def measure(model, n: int, seed: int, out, *, batch_size: int = 250, progress: bool = True) -> dict:
    """Sample ``n`` images of ``model`` unconditionally, classify them, write ``out/histogram.json``.

    Resumable: each batch's uint8 images, classifier features and predicted digits go to
    ``out/chunks/<b>.pt`` as soon as it is drawn, and a chunk already there is not drawn again (same noise
    per batch either way); ``out/samples.pt`` holds them all at the end."""
    from tqdm.auto import tqdm

    from pdmd_lab.embed import embed

    out = Path(out)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    classifier = load_mnist_classifier()
    t0, drawn = time.time(), 0
    parts = []
    for b, i in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="sample")):
        f = out / "chunks" / f"{b}.pt"
        if not f.exists():
            m = min(batch_size, n - i)
            z = torch.randn((m, *model.shape), generator=torch.Generator().manual_seed(int(seed) * 7919 + b))
            x = model.sample(torch.full((m,), NULL_LABEL), seed=int(seed) + b, noise=z).float().cpu()
            torch.save({"images": _to_uint8(x), "features": embed(classifier, x), "pred": classifier.predict(x)},
                       f.with_suffix(".tmp"))
            f.with_suffix(".tmp").rename(f)
            drawn += 1
        parts.append(torch.load(f))
    all_ = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    torch.save(all_, out / "samples.pt")
    counts = digit_counts(all_["pred"])
    res = {"n": n, "seed": seed, "steps": int(model.num_steps), "cfg": float(getattr(model, "cfg", 1.0)),
           "counts": counts.tolist(), "shares": [round(float(c) / n, 5) for c in counts],
           "sample_s_this_call": round(time.time() - t0, 1), "batches_drawn_this_call": drawn}
    (out / "histogram.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1

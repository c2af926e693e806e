"""Metrics for masked-diffusion samples.

* Two-token toy: the **joint** histogram of the ``V x V`` cells against the exact joint, TV and KL
  (never per-token marginals only: a factorised sampler matches them while the joint is wrong), and
  the TV that sampling noise alone gives at the same sample size.
* Binarised MNIST: class accuracy of the shipped MNIST classifier, Frechet distance on its features,
  per-class diversity (Vendi on features, Hamming distance between samples) and mean entropies
  (the classifier's prediction, and the categoricals the sampler draws from).

The shipped classifier (``assets/models/mnist/classifier``, trained on grey-level MNIST) reads the
binarised images as ``{-1, 1}``; on the binarised held-out split it scores 97.6% (98.4% on grey
levels), so it is used as is.
"""

from __future__ import annotations

import torch

from pdmd_lab import metrics as cont_metrics
from pdmd_lab.discrete.masking import all_masked, check_tokens, sample_masked, step_times

# Two-token toy ---------------------------------------------------------------------------------


def joint_histogram(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Shares ``(V, V)`` of token pairs ``(N, 2)`` in each cell, float64."""
    tokens = check_tokens(tokens, vocab_size).cpu()
    if tokens.ndim != 2 or tokens.shape[1] != 2 or len(tokens) == 0:
        raise ValueError(f"token pairs must have shape (N, 2) with N >= 1, got {tuple(tokens.shape)}")
    counts = torch.bincount(tokens[:, 0] * vocab_size + tokens[:, 1], minlength=vocab_size**2).double()
    return (counts / counts.sum()).reshape(vocab_size, vocab_size)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """``TV(p, q) = 1/2 sum |p - q|`` of two distributions of one shape."""
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    return float(0.5 * (p.double() - q.double()).abs().sum())


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """``KL(p || q) = sum p log(p / q)`` (0 log 0 = 0); ``q`` must be > 0 where ``p`` is (the smoothed joint is)."""
    p, q = p.double(), q.double()
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    if ((q <= 0) & (p > 0)).any():
        raise ValueError("KL(p || q) is infinite: q is 0 where p is not")
    nz = p > 0
    return float((p[nz] * torch.log(p[nz] / q[nz])).sum())


def joint_distances(tokens: torch.Tensor, labels: torch.Tensor, joint, reference=None) -> dict:
    """TV and ``KL(histogram || P)`` of class-conditional token pairs against the exact joint.

    ``joint`` is a :class:`~pdmd_lab.discrete.oracle.TokenJoint`; ``reference(c)``, when given, replaces
    ``joint.table(c)`` (e.g. ``lambda c: joint.k_step_law(2, c)``). Per class present in ``labels``,
    then means weighted by the class counts: ``{"tv", "kl", "per_class": {c: {"tv", "kl", "n"}}}``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    tokens = check_tokens(tokens, joint.vocab_size).cpu()
    if labels.shape != (len(tokens),):
        raise ValueError(f"labels must have shape ({len(tokens)},), got {tuple(labels.shape)}")
    per_class = {}
    for c in torch.unique(labels).tolist():
        h = joint_histogram(tokens[labels == c], joint.vocab_size)
        p = joint.table(c) if reference is None else reference(c)
        per_class[c] = {"tv": total_variation(h, p), "kl": kl_divergence(h, p), "n": int((labels == c).sum())}
    n = sum(v["n"] for v in per_class.values())
    return {"tv": sum(v["tv"] * v["n"] for v in per_class.values()) / n,
            "kl": sum(v["kl"] * v["n"] for v in per_class.values()) / n, "per_class": per_class}


def tv_noise_floor(p: torch.Tensor, n: int, repeats: int = 20, seed: int = 0) -> float:
    """Mean TV between ``p`` and the histogram of ``n`` exact draws from it: the floor sampling noise sets."""
    g = torch.Generator().manual_seed(seed)
    flat = p.double().flatten()
    tvs = []
    for _ in range(repeats):
        counts = torch.bincount(torch.multinomial(flat, n, replacement=True, generator=g), minlength=len(flat))
        tvs.append(total_variation(counts.double() / n, flat))
    return sum(tvs) / repeats


# Binarised MNIST -------------------------------------------------------------------------------


def to_images(tokens: torch.Tensor) -> torch.Tensor:
    """Binary tokens ``(B, C, H, W)`` as images in ``{-1, 1}`` (the classifier's input range)."""
    tokens = check_tokens(tokens, 2)
    return tokens.float() * 2 - 1


def hamming_diversity(tokens: torch.Tensor) -> float:
    """Mean share of positions at which two different samples differ (over pairs ``i != j``)."""
    x = tokens.flatten(1).double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"hamming_diversity needs at least 2 samples, got {n}")
    ones = x.sum(0)  # (D,) per position, pairs (i != j) that differ: 2 * ones * (n - ones)
    return float((2 * ones * (n - ones)).sum() / (n * (n - 1) * d))


def image_metrics(tokens: torch.Tensor, labels: torch.Tensor, classifier, reference: torch.Tensor) -> dict:
    """Binarised-image metrics with a classifier: accuracy, Frechet distance to ``reference`` tokens, diversity.

    Returns ``{"accuracy", "frechet", "vendi_per_class" (mean over classes of the cosine Vendi score of
    the features), "hamming_per_class" (mean over classes of :func:`hamming_diversity`),
    "classifier_entropy" (mean entropy of the predicted class distribution, nats)}``.
    """
    from pdmd_lab.embed import embed

    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    images = to_images(tokens).cpu()
    feats = embed(classifier, images)
    ref = embed(classifier, to_images(reference).cpu())
    with torch.no_grad():
        param = next(classifier.parameters())
        logits = torch.cat([classifier(images[i:i + 512].to(param.device)).cpu() for i in range(0, len(images), 512)])
    probs = torch.softmax(logits.double(), -1)
    per_vendi = cont_metrics.per_class(cont_metrics.vendi_score, feats, labels)
    per_hamming = {int(c): hamming_diversity(tokens[labels == c]) for c in torch.unique(labels)}
    return {
        "accuracy": cont_metrics.class_accuracy(logits.argmax(1), labels),
        "frechet": cont_metrics.frechet_distance(feats, ref),
        "vendi_per_class": sum(per_vendi.values()) / len(per_vendi),
        "hamming_per_class": sum(per_hamming.values()) / len(per_hamming),
        "classifier_entropy": float(-(probs * torch.log(probs.clamp_min(1e-30))).sum(1).mean()),
    }


def sampler_entropy(model, labels: torch.Tensor, shape, steps: int, *, cfg: float = 1.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Sample with ``steps`` steps and return ``(tokens, mean output entropy)``.

    The entropy (nats) is that of the categorical each position is drawn from at the step that reveals
    it: near 0 when the sampler commits, ``log V`` when it draws at random.
    """
    total, count = 0.0, 0

    def keep(d):
        nonlocal total, count
        revealed = (d["z"] == model.vocab_size) & (d["x_next"] != model.vocab_size)
        p = d["probs"]
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        total += float(h[revealed].sum())
        count += int(revealed.sum())

    device = next(iter(model.parameters()), torch.zeros(())).device if hasattr(model, "parameters") else "cpu"
    z = all_masked(len(labels), shape, model.vocab_size, device)
    x = sample_masked(model, z, step_times(steps), class_labels=labels.to(device), cfg=cfg, callback=keep,
                      generator=generator)
    return x, total / max(count, 1)

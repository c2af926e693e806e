"""``mnist-uncond``: collapse counted on images, with digits as modes.

The shipped MNIST teacher was trained with label dropout (10% of labels replaced by the null class
``10``), so with the null label and CFG off it is an unconditional MNIST teacher; no training is
needed. It is learned, not exact: its digit histogram is measured (:func:`measure`), not assumed
uniform. Students are distilled from it unconditionally (every batch carries the null label, teacher
spec ``zoo:mnist-uncond/teacher``, a :class:`~pdmd_lab.nets.NullLabelDenoiser` around the MNIST teacher's
weights, CFG 1) and counted the same way:

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

import functools
import json
import math
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
TEACHER = "zoo:mnist-uncond/teacher"
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
    """The shipped unconditional teacher (``mnist-uncond/teacher``: the MNIST teacher's null class, CFG 1)
    as a sampler."""
    from pdmd_lab.student import TeacherSampler
    from pdmd_lab.teacher import load_teacher

    return TeacherSampler(load_teacher("zoo:mnist-uncond/teacher"), steps=steps, cfg=1.0, dataset="mnist-uncond",
                          shape=(1, 28, 28), meta={"name": "mnist-uncond/teacher"})


def load_mnist_classifier():
    """The shipped MNIST classifier (``assets/models/mnist/classifier``), which counts the digits."""
    from pdmd_lab import io
    from pdmd_lab.embed import load_classifier

    return load_classifier(io.ASSETS / "mnist" / "classifier")


def measure(model, n: int, seed: int, out, *, batch_size: int = 250, progress: bool = True,
            worker: tuple[int, int] = (0, 1)) -> dict | None:
    """Sample ``n`` images of ``model`` unconditionally, classify them, write ``out/histogram.json``.

    Resumable: each batch's uint8 images, classifier features and predicted digits go to
    ``out/chunks/<b>.pt`` as soon as it is drawn, and a chunk already there is not drawn again (same noise
    per batch either way); ``out/samples.pt`` holds them all at the end. ``worker=(k, m)``: draw only the
    batches ``b`` with ``b % m == k`` (m processes share the work); returns None while chunks are missing."""
    from tqdm.auto import tqdm

    from pdmd_lab.embed import embed

    out = Path(out)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    classifier = load_mnist_classifier()
    t0, drawn = time.time(), 0
    parts = []
    for b, i in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="sample")):
        f = out / "chunks" / f"{b}.pt"
        if not f.exists() and b % worker[1] != worker[0]:
            continue
        if not f.exists():
            m = min(batch_size, n - i)
            z = torch.randn((m, *model.shape), generator=torch.Generator().manual_seed(int(seed) * 7919 + b))
            x = model.sample(torch.full((m,), NULL_LABEL), seed=int(seed) + b, noise=z).float().cpu()
            torch.save({"images": _to_uint8(x), "features": embed(classifier, x), "pred": classifier.predict(x)},
                       f.with_suffix(".tmp"))
            f.with_suffix(".tmp").rename(f)
            drawn += 1
        parts.append(torch.load(f))
    if len(parts) < -(-n // batch_size):
        return None
    all_ = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    torch.save(all_, out / "samples.pt")
    counts = digit_counts(all_["pred"])
    res = {"n": n, "seed": seed, "steps": int(model.num_steps), "cfg": float(getattr(model, "cfg", 1.0)),
           "counts": counts.tolist(), "shares": [round(float(c) / n, 5) for c in counts],
           "sample_s_this_call": round(time.time() - t0, 1), "batches_drawn_this_call": drawn}
    (out / "histogram.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def chunk_counts(out) -> tuple[np.ndarray, int]:
    """Digit counts over the chunks of a (possibly unfinished) :func:`measure` folder, and how many samples."""
    preds = [torch.load(f)["pred"] for f in sorted(Path(out, "chunks").glob("*.pt"))]
    if not preds:
        raise ValueError(f"{out} holds no sampled chunks")
    pred = torch.cat(preds)
    return digit_counts(pred), len(pred)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


# The teacher's reference, kept small in assets ------------------------------------------------------

REFERENCE_FEATURES = 2000  # teacher feature vectors kept for recall (PRDC); FD uses the mean and covariance of all


def save_reference(measure_dir, dest) -> dict:
    """Condense a :func:`measure` folder of the teacher into ``dest`` (safetensors): digit counts, the mean
    and covariance of all classifier features (for FD), and the first :data:`REFERENCE_FEATURES` feature
    vectors (for recall). Works on an unfinished folder too (the chunks there)."""
    from safetensors.torch import save_file

    chunks = sorted(Path(measure_dir, "chunks").glob("*.pt"), key=lambda f: int(f.stem))
    if not chunks:
        raise ValueError(f"{measure_dir} holds no sampled chunks")
    parts = [torch.load(f) for f in chunks]
    feats = torch.cat([p["features"] for p in parts]).double()
    pred = torch.cat([p["pred"] for p in parts])
    t = {"counts": torch.as_tensor(digit_counts(pred)), "feature_mean": feats.mean(0),
         "feature_cov": torch.cov(feats.T), "features": feats[:REFERENCE_FEATURES].float().contiguous(),
         "n": torch.tensor(len(pred))}
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dest))
    return {"n": len(pred), "counts": t["counts"].tolist()}


def load_reference(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def score_against_reference(x: torch.Tensor, classifier, ref: dict) -> dict:
    """The counting metrics, FD (against the teacher's feature mean and covariance) and recall (against the
    kept teacher features) of images ``x``."""
    from pdmd_lab.embed import embed

    feats = embed(classifier, x).double()
    counts = digit_counts(classifier.predict(x))
    fd = metrics.gaussian_frechet_distance(feats.mean(0).numpy(), torch.cov(feats.T).numpy(),
                                           ref["feature_mean"].numpy(), ref["feature_cov"].numpy())
    k = min(len(feats), len(ref["features"]))
    return {**count_scores(ref["counts"].numpy(), counts), "frechet_distance": fd,
            "recall": metrics.prdc(ref["features"][:k], feats[:k].float(), k=PRDC_K)["recall"], "n": len(x)}


# Figures ------------------------------------------------------------------------------------------

def histogram_figure(teacher_counts, rows: dict, *, title: str | None = None):
    """Per model (``{name: counts}``) the share of each predicted digit, bars against the teacher's."""
    from matplotlib.figure import Figure

    t = np.asarray(teacher_counts, np.float64) / np.sum(teacher_counts)
    n = max(1, len(rows))
    fig = Figure(figsize=(3.3 * n, 2.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    d = np.arange(NUM_DIGITS)
    for ax, (name, counts) in zip(axes, rows.items()):
        q = np.asarray(counts, np.float64) / max(1, np.sum(counts))
        ax.bar(d - 0.2, t, 0.4, color="0.6", label="teacher, 50 steps")
        ax.bar(d + 0.2, q, 0.4, color="C0", label=name)
        miss = ~digits_covered(teacher_counts, counts)
        for j in np.nonzero(miss)[0]:
            ax.annotate("missed", (j + 0.2, q[j]), ha="center", va="bottom", fontsize=6, color="C3")
        ax.set_xticks(d)
        ax.set_title(f"{name}\nKL(teacher || model) {kl_teacher_model(teacher_counts, counts):.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    axes[0].set_ylabel("share of samples", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def sorted_samples_figure(images: torch.Tensor, pred: torch.Tensor, *, per_digit: int = 12, title: str | None = None):
    """Samples sorted by predicted digit: one row per digit, the first ``per_digit`` samples predicted as it
    (an empty row is a digit the model did not draw); the row label gives its share."""
    from matplotlib.figure import Figure

    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = from_uint8(images)
    pred = torch.as_tensor(pred)
    h = images.shape[-1]
    canvas = np.full((NUM_DIGITS * (h + 2), per_digit * (h + 2)), -1.0)
    for dgt in range(NUM_DIGITS):
        idx = torch.nonzero(pred == dgt)[:per_digit, 0]
        for j, i in enumerate(idx.tolist()):
            canvas[dgt * (h + 2) + 1:dgt * (h + 2) + 1 + h, j * (h + 2) + 1:j * (h + 2) + 1 + h] = images[i, 0].numpy()
    fig = Figure(figsize=(per_digit * 0.45 + 0.8, NUM_DIGITS * 0.45 + 0.4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=-1, vmax=1)
    share = np.bincount(pred.numpy(), minlength=NUM_DIGITS)[:NUM_DIGITS] / max(1, len(pred))
    ax.set_yticks([dgt * (h + 2) + h / 2 for dgt in range(NUM_DIGITS)],
                  [f"{dgt}: {100 * s:.1f}%" for dgt, s in enumerate(share)], fontsize=7)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return fig


# Study runs ------------------------------------------------------------------------------------------

REFERENCE_PATH = (Path(__file__).resolve().parent.parent / "assets" / "results" / "mnist-uncond"
                  / "teacher_reference.safetensors")
STUDY_METRICS = ("digit_kl", "digits_covered", "max_share", "frechet_distance", "recall")


def study_scores(dataset, model, *, seed: int, n: int) -> dict:
    """One study run of ``mnist-uncond``: ``n`` unconditional samples of ``model`` (noise from ``seed``)
    scored against the teacher's shipped reference (:func:`save_reference`)."""
    if not REFERENCE_PATH.exists():
        raise ValueError(f"the teacher's reference {REFERENCE_PATH} is missing: run uncond.measure on the teacher "
                         f"and uncond.save_reference first")
    x = sample_unconditional(model, n, seed)
    s = score_against_reference(x, load_mnist_classifier(), load_reference(REFERENCE_PATH))
    return {k: s[k] for k in (*STUDY_METRICS, "digits_missed", "histogram")}


def report(measure_dir, out, models: dict, *, n: int = 2000, seed: int = 0) -> dict:
    """The mnist-uncond results folder ``out``: the teacher's reference condensed from ``measure_dir``
    (:func:`save_reference`), ``teacher_histogram.json``, each model of ``models`` (``{name: Sampler}``)
    scored on ``n`` samples (``scores.json``), the digit histograms against the teacher's
    (``histograms.png``) and the samples sorted by predicted digit (``sorted_<name>.png``, the teacher's
    from its measurement)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = save_reference(measure_dir, out / "teacher_reference.safetensors")
    ref = load_reference(out / "teacher_reference.safetensors")
    counts = ref["counts"].numpy()
    teacher = {"n": info["n"], "steps": 50, "cfg": 1.0, "counts": counts.tolist(),
               "shares": [round(float(c) / info["n"], 5) for c in counts],
               "standard_error": [round(float(np.sqrt(c / info["n"] * (1 - c / info["n"]) / info["n"])), 5)
                                  for c in counts]}
    (out / "teacher_histogram.json").write_text(json.dumps(teacher, indent=1) + "\n")
    classifier = load_mnist_classifier()
    chunks = sorted(Path(measure_dir, "chunks").glob("*.pt"), key=lambda f: int(f.stem))
    first = torch.load(chunks[0])
    sorted_samples_figure(first["images"], first["pred"], title=f"mnist-uncond teacher, 50 steps: "
                          f"{len(first['pred'])} samples sorted by predicted digit").savefig(
        out / "sorted_teacher@50.png", dpi=110)
    scores, hists = {}, {}
    for name, model in models.items():
        x = sample_unconditional(model, n, seed)
        pred = classifier.predict(x)
        scores[name] = score_against_reference(x, classifier, ref)
        hists[name] = digit_counts(pred)
        sorted_samples_figure(x, pred, title=f"{name}: {n} samples sorted by predicted digit").savefig(
            out / f"sorted_{name.replace('/', '_')}.png", dpi=110)
    if hists:
        histogram_figure(counts, hists, title=f"digit histograms against the 50-step teacher's ({info['n']} "
                         f"samples)").savefig(out / "histograms.png", dpi=110)
    (out / "scores.json").write_text(json.dumps({"n": n, "seed": seed, "smoothing": SMOOTHING,
                                                 "cover_share": COVER_SHARE, "rows": scores}, indent=1) + "\n")
    return {"teacher": teacher, "rows": scores}


# One panel of the app's Compare ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def shipped_classifier():
    """:func:`load_mnist_classifier`, loaded once per process."""
    return load_mnist_classifier()


def reference_counts() -> np.ndarray:
    """The 50-step teacher's digit counts from its shipped reference (:data:`REFERENCE_PATH`)."""
    if not REFERENCE_PATH.exists():
        raise ValueError(f"the teacher's reference {REFERENCE_PATH} is missing: run uncond.measure on the teacher "
                         f"and uncond.save_reference first")
    return load_reference(REFERENCE_PATH)["counts"].numpy()


def panel_scores(x: torch.Tensor, classifier=None) -> dict:
    """What one Compare panel shows of ``x``: digit counts, KL(teacher || model) against the teacher's
    reference histogram and the digits covered (of 10)."""
    counts = digit_counts((classifier or shipped_classifier()).predict(x))
    ref = reference_counts()
    return {"counts": counts, "digit_kl": kl_teacher_model(ref, counts),
            "digits_covered": int(digits_covered(ref, counts).sum())}


def grid_and_histogram(x: torch.Tensor, *, classifier=None, title: str | None = None):
    """One Compare panel: the images as a grid over a bar chart of their predicted digits (the model's
    shares in colour, the teacher's reference shares as grey outlines; a missed digit's bar in red).
    Returns the grid's axes."""
    from matplotlib.figure import Figure

    from pdmd_lab import viz

    counts = panel_scores(x, classifier)["counts"]
    ref = reference_counts()
    fig = Figure(figsize=(3.6, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3.6, 1.0])
    arr = viz._np(x, float)
    viz._imshow(top, viz.image_grid_array(arr, math.ceil(math.sqrt(len(arr)))))
    top.set_axis_off()
    if title:
        top.set_title(title, fontsize=9)
    d = np.arange(NUM_DIGITS)
    q = counts / max(1, counts.sum())
    miss = ~digits_covered(ref, counts)
    bottom.bar(d, q, 0.7, color=["C3" if m else "C0" for m in miss])
    bottom.bar(d, ref / ref.sum(), 0.7, fill=False, edgecolor="0.35", lw=0.8)
    bottom.set_xticks(d)
    bottom.set_ylim(0, max(0.3, float(q.max()) * 1.1))
    bottom.tick_params(labelsize=6)
    bottom.set_ylabel("digit share", fontsize=6)
    return top

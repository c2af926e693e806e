"""Evaluation of shipped (or any) samplers side by side, speed / memory benchmarks, and a diversity callback.

* :func:`evaluate_models`: one family, same labels and same noise for every model; fidelity (Frechet
  distance / energy distance, PRDC), diversity (per-class Vendi, pairwise cosine / distance, each also as a
  ratio to the reference's value), mode coverage (Gaussian-mixture families), class accuracy (images),
  NFE, sampling time and speedup over the reference. :func:`markdown_table` renders the result.
* :func:`score_samples`: the metric pipeline on samples already drawn (what ``evaluate_models`` uses).
* :func:`bench`: sampling speedup of the students over the 50-step CFG teacher, and the training-memory
  argument of Phased DMD: the last phase's rollout (N-1 steps without grad, one with) saves the
  activations of one step, backprop through an N-step generator saves N steps' worth.
* :class:`DiversityMonitor`: a :class:`~pdmd_lab.distill.Distiller` callback logging the student's diversity.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pdmd_lab import metrics, zoo
from pdmd_lab.data import get_dataset

PRDC_K = 5
RBF_BANDWIDTH = 0.5  # fixed Vendi bandwidth for 2D points, so that sets are comparable
TEACHER_ROWS = (50, 4, 1)  # teacher step counts always evaluated
REFERENCE_SEED_OFFSET = 1_000_003  # the reference set uses other noise than the rows (its own row is the floor)


# Names and models ------------------------------------------------------------------------------

def _load(name: str):
    return zoo.load(name)


def _is_teacher(model) -> bool:
    return hasattr(model, "with_steps")


def _row_name(name: str, model) -> str:
    """Teachers always carry their step count (``mnist/teacher@50``)."""
    base, _ = zoo.parse_name(name)
    return f"{base}@{model.num_steps}" if _is_teacher(model) else base


def _family(model, name: str) -> str:
    fam = getattr(model, "dataset", "") or ""
    if not fam:
        raise ValueError(f"model {name!r} does not say which dataset it samples")
    return fam


def _labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def _batch_noise(shape, seed: int, b: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 7919 + b)
    return torch.randn((batch, *shape), generator=g)


@torch.no_grad()
def _sample_all(model, labels: torch.Tensor, seed: int, batch_size: int) -> tuple[torch.Tensor, float]:
    """All samples for ``labels`` in batches with fixed noise; returns (samples, median ms per batch)."""
    out, times = [], []
    for b, i in enumerate(range(0, len(labels), batch_size)):
        lab = labels[i:i + batch_size]
        z = _batch_noise(model.shape, seed, b, len(lab))
        t0 = time.perf_counter()
        x = model.sample(lab, seed=seed + b, noise=z)
        times.append((time.perf_counter() - t0) * 1000)
        out.append(x.detach().cpu().float())
    return torch.cat(out), float(statistics.median(times))


def _classifier(family: str):
    from pdmd_lab.embed import load_classifier

    path = zoo.ASSETS / family / "classifier"
    return load_classifier(path) if (path / "config.json").exists() else None


# Metrics ---------------------------------------------------------------------------------------

def _mean_per_class(fn, x, labels, **kw) -> float:
    vals = metrics.per_class(fn, x, labels, **kw)
    return float(np.mean(list(vals.values())))


def _diversity(kind: str, feats: torch.Tensor, labels: torch.Tensor) -> dict:
    if kind == "image":
        return {"pairwise_cosine": _mean_per_class(metrics.pairwise_cosine_similarity, feats, labels),
                "vendi": _mean_per_class(metrics.vendi_score, feats, labels, kernel="cosine")}
    return {"pairwise_distance": _mean_per_class(metrics.pairwise_distance, feats, labels),
            "vendi": _mean_per_class(metrics.vendi_score, feats, labels, kernel="rbf", bandwidth=RBF_BANDWIDTH)}


def score_samples(family: str, samples_by_name: dict, labels, reference_name: str, *,
                  classifier=None, k: int = PRDC_K) -> dict:
    """Score sample sets of one family against the reference set ``samples_by_name[reference_name]``.

    ``labels`` are the classes every set was asked for (same for all). Images are embedded with
    ``classifier`` (``embed.Classifier``; None: flattened pixels, and no class accuracy); 2D points are
    scored raw. Returns ``{name: {metric: value}}``; the reference's own entry compares it with itself.
    """
    ds = get_dataset(family)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if reference_name not in samples_by_name:
        raise ValueError(f"reference {reference_name!r} is not among the sample sets ({', '.join(samples_by_name)})")
    n = len(labels)
    for name, x in samples_by_name.items():
        if len(x) != n:
            raise ValueError(f"samples of {name!r}: {len(x)} samples for {n} labels")

    def feats(x):
        x = torch.as_tensor(x).float()
        if ds.kind == "image" and classifier is not None:
            from pdmd_lab.embed import embed

            return embed(classifier, x)
        return x.flatten(1)

    ref_x = torch.as_tensor(samples_by_name[reference_name]).float()
    ref_f = feats(ref_x)
    ref_div = _diversity(ds.kind, ref_f, labels)
    ref_hist = metrics.mode_histogram(ds.gmm, ref_x, labels) if ds.kind != "image" and ds.gmm is not None else None
    out = {}
    for name, x in samples_by_name.items():
        x = torch.as_tensor(x).float()
        f = ref_f if name == reference_name else feats(x)
        row: dict = {}
        if ds.kind == "image":
            if classifier is not None:
                row["accuracy"] = metrics.class_accuracy(classifier.predict(x), labels)
            row["frechet_distance"] = metrics.frechet_distance(f, ref_f)
        else:
            if ds.gmm is not None:
                cov = metrics.mode_coverage(ds.gmm, x, labels, reference_weights=ref_hist)
                row.update(modes_covered=cov["modes_covered"], modes_expected=cov["modes_expected"],
                           mode_coverage=cov["coverage"], high_quality=cov["high_quality"], mode_kl=cov["kl"],
                           modes_per_class={int(c): v["modes_covered"] for c, v in cov["per_class"].items()})
            row["energy_distance"] = metrics.energy_distance(x, ref_x)
        row.update(metrics.prdc(ref_f, f, k=k))
        div = _diversity(ds.kind, f, labels)
        for key, v in div.items():
            row[key] = v
            row[f"{key}_ratio"] = v / ref_div[key] if ref_div[key] != 0 else float("nan")
        out[name] = row
    return out


# evaluate_models -------------------------------------------------------------------------------

def evaluate_models(names: list[str], n: int = 1000, *, reference: str | None = None, seed: int = 0,
                    batch_size: int = 250, out: Path | None = None, progress: bool = True) -> dict:
    """Sample ``n`` outputs (classes cycling) from every model with the same noise, and score them.

    ``names``: zoo names, folders or ``name@steps`` (teachers); all of one family. The family's teacher
    at 50, 4 and 1 Euler steps is always added. ``reference`` (default ``<family>/teacher@50``) is
    sampled a second time with other noise as the reference set, so its own row is the
    teacher-vs-teacher floor. Returns ``{"family", "n", "reference", "floor", "rows": {name: {...}}}``
    (plus ``"paths"`` when ``out`` is given: ``metrics.json`` and ``metrics.md`` are written there).
    """
    if isinstance(names, str):
        names = [names]
    names = [x for x in (names or []) if x]
    if not names:
        raise ValueError("names is empty: give at least one model name")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    models = {}
    for name in names:
        m = _load(name)
        models[_row_name(name, m)] = m
    families = {_family(m, k) for k, m in models.items()}
    if len(families) != 1:
        raise ValueError(f"models must all be of one family, got {', '.join(sorted(families))}")
    family = families.pop()
    teacher_name = f"{family}/teacher"
    if teacher_name not in zoo.list_models():
        raise ValueError(f"family {family!r} has no shipped teacher ({teacher_name!r})")
    teacher = zoo.load(teacher_name, steps=50)
    for s in TEACHER_ROWS:
        models.setdefault(f"{teacher_name}@{s}", teacher.with_steps(s))
    if reference is None:
        ref_name, ref_model = f"{teacher_name}@50", models[f"{teacher_name}@50"]
    else:
        ref_model = _load(reference)
        ref_name = _row_name(reference, ref_model)
        if _family(ref_model, reference) != family:
            raise ValueError(f"reference {reference!r} is of family {ref_model.dataset!r}, not {family!r}")
        ref_model = models.setdefault(ref_name, ref_model)
    ds = get_dataset(family)
    if n < 2 * ds.num_classes or n < PRDC_K + 1:
        raise ValueError(f"n={n} is too small: need n >= {max(2 * ds.num_classes, PRDC_K + 1)} "
                         f"(2 samples per class for {ds.num_classes} classes, {PRDC_K + 1} for PRDC)")
    labels = _labels(n, ds.num_classes)

    samples, timing = {}, {}
    ref_key = "__reference_set__"
    jobs = [(ref_key, ref_model, seed + REFERENCE_SEED_OFFSET), *[(k, m, seed) for k, m in models.items()]]
    for key, model, s in tqdm(jobs, desc="sampling", disable=not progress):
        samples[key], timing[key] = _sample_all(model, labels, s, batch_size)
    classifier = _classifier(family) if ds.kind == "image" else None
    scores = score_samples(family, samples, labels, ref_key, classifier=classifier)
    rows = {}
    ref_ms = timing[ref_name]
    for key, model in models.items():
        rows[key] = {"describe": model.describe(), "nfe": int(model.nfe), "steps": int(model.num_steps),
                     "ms_per_batch": timing[key], "speedup": ref_ms / timing[key] if timing[key] > 0 else float("nan"),
                     **scores[key]}
    floor_keys = ("frechet_distance", "energy_distance", "precision", "recall", "density", "coverage")
    result = {"family": family, "n": n, "batch_size": batch_size, "seed": seed, "reference": ref_name,
              "floor": {k: v for k, v in scores[ref_name].items() if k in floor_keys}, "rows": rows}
    return _write_outputs(result, out, "metrics", markdown_table)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


IMAGE_COLUMNS = [("nfe", "NFE"), ("ms_per_batch", "ms / batch"), ("speedup", "speedup"),
                 ("accuracy", "class acc."), ("frechet_distance", "FD (classifier)"), ("precision", "precision"),
                 ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
                 ("pairwise_cosine", "pairwise cos"), ("pairwise_cosine_ratio", "pairwise cos / ref"),
                 ("vendi", "Vendi"), ("vendi_ratio", "Vendi / ref")]
POINT_COLUMNS = [("nfe", "NFE"), ("ms_per_batch", "ms / batch"), ("speedup", "speedup"),
                 ("modes", "modes covered"), ("high_quality", "high quality"), ("mode_kl", "mode KL"),
                 ("energy_distance", "energy dist."), ("precision", "precision"), ("recall", "recall"),
                 ("density", "density"), ("coverage", "coverage"), ("pairwise_distance", "pairwise dist."),
                 ("pairwise_distance_ratio", "pairwise dist. / ref"), ("vendi", "Vendi (RBF)"),
                 ("vendi_ratio", "Vendi / ref")]


def markdown_table(result: dict) -> str:
    """One row per model, readable column names, 3 significant digits."""
    rows = result["rows"]
    image = get_dataset(result["family"]).kind == "image"
    cols = IMAGE_COLUMNS if image else POINT_COLUMNS
    has_modes = any("modes_covered" in r for r in rows.values())
    cols = [(k, h) for k, h in cols if (k == "modes" and has_modes) or any(k in r for r in rows.values())]
    lines = ["| model | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{r.get('modes_covered', '-')}/{r.get('modes_expected', '-')}" if k == "modes" else _fmt(r.get(k))
                 for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floor = ", ".join(f"{k} {_fmt(v)}" for k, v in result.get("floor", {}).items())
    notes = (f"\n{result['n']} samples per model (classes cycling), same noise for every model; reference "
             f"`{result['reference']}` sampled again with other noise (its own row is the floor: {floor}).\n")
    return "\n".join(lines) + "\n" + notes


# DiversityMonitor ------------------------------------------------------------------------------

class DiversityMonitor:
    """Distiller callback: diversity and saturation of ``n`` student samples at fixed noise.

    Logs ``div_pairwise_distance`` (2D) or ``div_pairwise_cosine`` (images: classifier features when a
    classifier is given, else flattened pixels), ``div_vendi`` (per class, averaged; RBF with bandwidth
    0.5 for 2D, cosine for images) and ``div_saturation``: share of pixel values with ``|x| > 0.98``
    (images) or share of 2D samples outside 3 stds of every mode (Gaussian-mixture families).
    ``every``: compute only on iterations divisible by it (and the last); None: every call.
    """

    def __init__(self, n: int = 256, every: int | None = None, *, classifier=None, seed: int = 1234):
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive integer or None, got {every!r}")
        self.n, self.every, self.classifier, self.seed = n, every, classifier, seed
        self.history: list[dict] = []

    def __call__(self, info: dict) -> dict:
        it = int(info.get("iter", 0))
        d = info.get("distiller")
        last = d is not None and it == getattr(d, "total_iters", -1)
        if self.every is not None and it % self.every != 0 and not last:
            return {}
        student = info["student"]
        ds = get_dataset(student.dataset)
        labels = _labels(self.n, ds.num_classes)
        x = student.sample(labels, seed=self.seed).detach().cpu().float()
        logs = self.measure(ds, x, labels)
        self.history.append({"iter": it, **logs})
        return logs

    def measure(self, ds, x: torch.Tensor, labels: torch.Tensor) -> dict:
        if ds.kind == "image":
            if self.classifier is not None:
                from pdmd_lab.embed import embed

                f = embed(self.classifier, x)
            else:
                f = x.flatten(1)
            return {"div_pairwise_cosine": _mean_per_class(metrics.pairwise_cosine_similarity, f, labels),
                    "div_vendi": _mean_per_class(metrics.vendi_score, f, labels, kernel="cosine"),
                    "div_saturation": float((x.abs() > 0.98).double().mean())}
        logs = {"div_pairwise_distance": _mean_per_class(metrics.pairwise_distance, x, labels),
                "div_vendi": _mean_per_class(metrics.vendi_score, x, labels, kernel="rbf", bandwidth=RBF_BANDWIDTH)}
        if ds.gmm is not None:
            logs["div_saturation"] = float((ds.gmm.assign_modes(x) < 0).double().mean())
        return logs


def _write_outputs(result: dict, out, stem: str, to_markdown) -> dict:
    """Write ``STEM.json`` and ``STEM.md`` into ``out`` (when given) and record their paths in ``result``."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(_json_ready(result), indent=2))
        (out / f"{stem}.md").write_text(to_markdown(result))
        result["paths"] = {"json": str(out / f"{stem}.json"), "markdown": str(out / f"{stem}.md")}
    return result

"""Embeddings, training curves, metric bars and one class's clouds against the reference's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pdmd_lab.viz.base import (
    _class_handles,
    _grid,
    _labels_np,
    _new_figure,
    _np,
    _scatter_classes,
    _square_limits,
    method_colors,
    method_markers,
)

# Embeddings, training curves, metrics ---------------------------------------------------------

def embedding_figure(points, methods: list[str], labels, *, title: str | None = None) -> Figure:
    """A 2D embedding (PCA / t-SNE of features) coloured by method (left) and by class (right)."""
    xy = _np(points)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(xy.shape)}")
    methods = [str(m) for m in methods]
    if len(methods) != len(xy):
        raise ValueError(f"methods must name one method per point ({len(xy)}), got {len(methods)}")
    y = _labels_np(labels, len(xy))
    fig = _new_figure(10, 5.4 + (0.3 if title else 0))
    ax_m, ax_c = fig.subplots(1, 2, sharex=True, sharey=True)
    colors, markers = method_colors(methods), method_markers(methods)
    names = np.array(methods)
    order = np.random.default_rng(0).permutation(len(xy))
    for chunk in np.array_split(order, 5):  # interleaved layers: no method hides under the last one drawn
        for m in colors:
            idx = chunk[names[chunk] == m]
            if len(idx):
                ax_m.scatter(xy[idx, 0], xy[idx, 1], s=10, color=colors[m], marker=markers[m], alpha=0.65, lw=0)
    handles = [Line2D([], [], ls="", marker=markers[m], ms=5, color=col, label=m) for m, col in colors.items()]
    ax_m.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=min(len(colors), 4),
                fontsize=8, frameon=False)
    ax_m.set_title("by method", fontsize=10)
    _scatter_classes(ax_c, xy, y, s=9, alpha=0.65)
    if y is not None:
        classes = sorted(int(c) for c in np.unique(y))
        ax_c.legend(handles=_class_handles(classes), loc="upper center", bbox_to_anchor=(0.5, -0.04),
                    ncol=min(len(classes), 5), fontsize=8, frameon=False)
    ax_c.set_title("by class", fontsize=10)
    for ax in (ax_m, ax_c):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


_BOOKKEEPING = {"iter", "phase", "time_s", "wall_time_s", "epoch"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_log(log_path_or_records) -> list[dict]:
    """Records of a JSONL run log (path, run folder holding ``log.jsonl``, or a list of dicts).

    After a resume a log can repeat iterations; the last record of each iteration wins. Sorted by iter.
    """
    if isinstance(log_path_or_records, (str, Path)):
        path = Path(log_path_or_records)
        if path.is_dir():
            path = path / "log.jsonl"
        if not path.exists():
            raise ValueError(f"no run log at {str(path)!r}")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        records = list(log_path_or_records)
    by_iter = {r["iter"]: r for r in records if isinstance(r, dict) and "iter" in r}
    return [by_iter[i] for i in sorted(by_iter)]


def training_curves_figure(log_path_or_records, *, keys=None, max_cols: int = 3) -> Figure:
    """Every numeric series of a run log against ``iter``, one panel each; phases split by vertical lines.

    ``keys`` picks the series (default: every numeric key except ``iter``, ``phase`` and times).
    """
    records = read_log(log_path_or_records)
    if not records:
        raise ValueError("the run log holds no records with an 'iter' key")
    if keys is None:
        keys = []
        for r in records:
            for k, v in r.items():
                if k not in _BOOKKEEPING and k not in keys and _is_number(v):
                    keys.append(k)
    if not keys:
        raise ValueError("the run log holds no numeric series besides 'iter'")
    its = np.array([r["iter"] for r in records], dtype=float)
    n = len(keys)
    cols = min(n, max_cols)
    fig = _new_figure(3.6 * cols + 0.3, 2.6 * math.ceil(n / cols) + 0.3)
    axes = _grid(fig, n, max_cols, sharex=True)
    phases = [r.get("phase") for r in records]
    changes = [(its[i - 1], phases[i]) for i in range(1, len(records)) if phases[i] != phases[i - 1]]
    for ax, key in zip(axes, keys):
        vals = np.array([r[key] if _is_number(r.get(key)) else np.nan for r in records], dtype=float)
        ax.plot(its, vals, lw=1.2, color="#1f77b4")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if phases[0] is not None and changes:
            starts = [its[0]] + [x for x, _ in changes]
            names = [phases[0]] + [p for _, p in changes]
            for x in starts[1:]:
                ax.axvline(x, color="#555555", ls="--", lw=0.9)
            ends = starts[1:] + [its[-1]]
            span = max(its[-1] - its[0], 1.0)
            for a, b, p in zip(starts, ends, names):
                if (b - a) / span > 0.1:
                    ax.text((a + b) / 2, 0.97, f"phase {p}", transform=ax.get_xaxis_transform(), ha="center",
                            va="top", fontsize=7, color="#555555", bbox=dict(fc="white", ec="none", alpha=0.7,
                                                                             pad=1.0))
    for ax in axes[-cols:]:
        ax.set_xlabel("iteration")
    return fig


def metrics_bar_figure(table: dict, metrics: list[str], *, title: str | None = None) -> Figure:
    """Bars of ``table[method][metric]``: one panel per metric (their scales differ), one bar per method.

    Methods keep the same colour (:func:`method_colors`) in every panel; each bar is labelled with
    its value, missing or non-finite values with "n/a".
    """
    if not table or not metrics:
        raise ValueError("metrics_bar_figure needs a non-empty table and at least one metric")
    methods = list(table)
    colors = method_colors(methods)
    n = len(metrics)
    cols = min(n, 4)
    fig = _new_figure(max(3.2, 0.55 * len(methods) + 1.2) * cols, 2.9 * math.ceil(n / cols) + 0.7)
    axes = _grid(fig, n, 4)
    xs = np.arange(len(methods))
    for ax, metric in zip(axes, metrics):
        vals = np.array([float(table[m].get(metric, np.nan)) if table[m].get(metric) is not None else np.nan
                         for m in methods])
        finite = np.isfinite(vals)
        bars = ax.bar(xs[finite], vals[finite], width=0.7,
                      color=[colors[m] for m, f in zip(methods, finite) if f])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals[finite]], fontsize=7, padding=2)
        for x in xs[~finite]:
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777777")
        ax.set_xticks(xs, [])
        ax.tick_params(axis="x", length=0)
        ax.set_title(metric, fontsize=10)
        ax.margins(y=0.18)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=8)
    handles = [Patch(color=colors[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(methods), 6), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


# Within one class: each model's cloud against the reference's ----------------------------------

def _default_class_scores(ref: np.ndarray, pts: np.ndarray) -> dict[str, float]:
    """Spread (mean pairwise distance, relative to the reference's) and PRDC coverage of the 2D points."""
    from pdmd_lab import metrics

    out = {}
    if len(ref) >= 2 and len(pts) >= 2:
        out["spread"] = metrics.pairwise_distance(torch.as_tensor(pts)) / max(
            metrics.pairwise_distance(torch.as_tensor(ref)), 1e-12)
    k = min(5, len(ref) - 1)
    if k >= 1 and len(pts) >= 1:
        out["coverage"] = metrics.prdc(torch.as_tensor(ref), torch.as_tensor(pts), k=k)["coverage"]
    return out


def class_embedding_figure(points: dict, *, reference: str | None = None, scores: dict | None = None,
                           title: str | None = None, max_cols: int = 3) -> Figure:
    """Within one class: the reference's (teacher's) cloud against each other model's, one panel each.

    ``points[name]`` is ``(n, 2)`` embedding coordinates of one model's samples of the class, all
    projected together so the panels share their axes. ``reference`` (default: the first name) is
    drawn in every panel, the panel's model on top of it, each in its own colour and marker
    (:func:`method_colors`, :func:`method_markers`). Each panel carries ``scores[name]`` (a dict of
    numbers, e.g. measured in feature space by the caller); by default the spread (mean pairwise
    distance relative to the reference's: 1 = as spread as the reference, near 0 = collapsed) and
    the coverage (share of reference points with a model point among their 5 nearest neighbours,
    :func:`pdmd_lab.metrics.prdc`) of the 2D points shown.
    """
    if not points:
        raise ValueError("points must hold at least one model")
    data = {str(k): _np(v) for k, v in points.items()}
    for name, xy in data.items():
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"class_embedding_figure needs 2D points (n, 2); {name!r} has shape {xy.shape}")
    names = list(data)
    reference = names[0] if reference is None else str(reference)
    if reference not in data:
        raise ValueError(f"reference {reference!r} is not one of the models: {', '.join(names)}")
    others = [n for n in names if n != reference] or [reference]
    colors, markers = method_colors(names), method_markers(names)
    n = len(others)
    cols = max(1, min(n, max_cols))
    fig = _new_figure(3.3 * cols + 0.2, 3.5 * math.ceil(n / cols) + (0.5 if title else 0.1))
    axes = _grid(fig, n, max_cols, sharex=True, sharey=True)
    xlim, ylim = _square_limits(list(data.values()))
    ref = data[reference]
    for ax, name in zip(axes, others):
        ax.scatter(ref[:, 0], ref[:, 1], s=16, color=colors[reference], marker=markers[reference], alpha=0.35,
                   lw=0, label=reference, zorder=2)
        if name != reference:
            xy = data[name]
            ax.scatter(xy[:, 0], xy[:, 1], s=18, color=colors[name], marker=markers[name], alpha=0.85,
                       lw=0.3, edgecolors="white", label=name, zorder=3)
        sc = (scores or {}).get(name)
        if sc is None:
            sc = _default_class_scores(ref, data[name])
        text = "\n".join(f"{k} {v:.2f}" if _is_number(v) else f"{k} {v}" for k, v in sc.items())
        if text:
            ax.text(0.03, 0.97, text, transform=ax.transAxes, ha="left", va="top", fontsize=8, zorder=5,
                    bbox=dict(fc="white", ec="#bbbbbb", alpha=0.85, pad=2.0))
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name if name == reference else f"{name} vs {reference}", fontsize=9)
        ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.8, markerscale=1.2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig



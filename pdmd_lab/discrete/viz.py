"""Figures of masked-diffusion samples (they take data and return a Figure; nothing here trains).

* Two-token toy: the joint histogram of the ``V x V`` cells, next to the true joint (ghost modes of a
  few-step sampler show up as off-ring cells).
* Binarised MNIST: image grids through :mod:`pdmd_lab.viz`, tokens shown as black / white pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from pdmd_lab import viz
from pdmd_lab.data import get_dataset
from pdmd_lab.discrete.metrics import joint_histogram, to_images


def _joint_of(dataset: str):
    from pdmd_lab.discrete.teacher import ORACLES

    if dataset not in ORACLES:
        return None
    return ORACLES[dataset](get_dataset(dataset).vocab_size)


def _hist_panel(ax, h: np.ndarray, title: str, vmax: float) -> None:
    ax.imshow(h.T, origin="lower", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def joint_figure(samples: dict, dataset: str = "ring-mix-tokens", *, label: int | None = None,
                 title: str | None = None, max_cols: int = 4, true_joint: bool = True) -> Figure:
    """One panel per entry of ``samples`` (``name -> (tokens (N, 2), labels)``) with the histogram of the
    joint (class ``label`` only, or all), after a first panel with the true joint when it is known and
    ``true_joint`` (the app draws one model per figure and leaves it out)."""
    joint = _joint_of(dataset) if true_joint else None
    v = get_dataset(dataset).vocab_size
    panels = []
    if joint is not None:
        p = joint.table(label) if label is not None else joint.tables[:-1].mean(0)
        panels.append(("true joint", p.numpy()))
    for name, (tokens, labels) in samples.items():
        tokens = torch.as_tensor(tokens)
        if label is not None:
            tokens = tokens[torch.as_tensor(labels) == label]
        panels.append((name, joint_histogram(tokens, v).numpy()))
    vmax = max(float(np.quantile(h, 0.995)) for _, h in panels) or 1.0
    cols = min(max_cols, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.5 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, h) in zip(axes, panels):
        _hist_panel(ax, h, name, vmax)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    what = f"class {label}" if label is not None else "all classes"
    fig.suptitle(title or f"{dataset}: joint of the two tokens ({what})", fontsize=10)
    return fig


def samples_figure(tokens, labels=None, *, dataset: str = "", title: str | None = None) -> Figure:
    """The figure of ``pdmd-lab sample`` for token datasets: per-class joints (toy) or an image grid."""
    ds = get_dataset(dataset)
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2:  # two tokens per sample
        labels = torch.zeros(len(tokens), dtype=torch.long) if labels is None else torch.as_tensor(labels)
        classes = sorted(torch.unique(labels).tolist())
        fig = Figure(figsize=(2.4 * len(classes), 2.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(classes)))
        hists = [joint_histogram(tokens[labels == c], ds.vocab_size).numpy() for c in classes]
        vmax = max(float(np.quantile(h, 0.995)) for h in hists) or 1.0
        for ax, c, h in zip(axes, classes, hists):
            _hist_panel(ax, h, f"class {c}", vmax)
        fig.suptitle(title or dataset, fontsize=10)
        return fig
    return viz.samples_figure(to_images(tokens), labels, dataset=dataset, title=title)


def grid_figure(rows: dict, *, captions: dict | None = None, title: str | None = None) -> Figure:
    """Binarised images, models as rows: ``rows[name] = tokens (N, 1, H, W)`` (same labels and seeds per column)."""
    return viz.image_grid_figure({k: to_images(v) for k, v in rows.items()}, captions=captions, title=title)


def steps_comparison_figure(rows: dict, *, dataset: str = "ring-mix-tokens", label: int | None = None,
                            title: str | None = None) -> Figure:
    """The two-token toy, one row per step count ``k``: the true joint, then each model's joint histogram.

    ``rows[k] = {column title: (tokens (N, 2), labels)}`` (e.g. the teacher at ``k`` steps, D-MMD and D-MMD
    without the noise input); titles carry what the caller puts in them (TV, NFE). A missing model leaves
    its cell blank."""
    from pdmd_lab.discrete.metrics import joint_distances

    joint = _joint_of(dataset)
    v = get_dataset(dataset).vocab_size
    cols = 1 + max(len(r) for r in rows.values())
    true = (joint.table(label) if label is not None else joint.tables[:-1].mean(0)).numpy()
    hists = {}
    for k, models in rows.items():
        for name, (tokens, labels) in models.items():
            tokens, labels = torch.as_tensor(tokens), torch.as_tensor(labels)
            tv = joint_distances(tokens, labels, joint)["tv"]
            pick = tokens if label is None else tokens[labels == label]
            hists[k, name] = (joint_histogram(pick, v).numpy(), tv)
    vmax = max([float(np.quantile(true, 0.995))] + [float(np.quantile(h, 0.995)) for h, _ in hists.values()]) or 1.0
    fig = Figure(figsize=(2.3 * cols, 2.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), cols))
    for i, (k, models) in enumerate(rows.items()):
        _hist_panel(axes[i, 0], true, "true joint", vmax)
        axes[i, 0].set_ylabel(f"k = {k}", fontsize=10)
        for j in range(1, cols):
            names = list(models)
            if j - 1 >= len(names):
                axes[i, j].set_axis_off()
                continue
            h, tv = hists[k, names[j - 1]]
            _hist_panel(axes[i, j], h, f"{names[j - 1]}\nTV {tv:.3f}", vmax)
    what = f"class {label}" if label is not None else "all classes"
    fig.suptitle(title or f"{dataset}: joint of the two tokens ({what}); TV to the true joint over all classes",
                 fontsize=10)
    return fig

"""Sample sets: scatters of points over their modes, image grids, the figure of ``pdmd-lab sample``."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from pdmd_lab.viz.base import (
    _class_handles,
    _draw_modes,
    _grid,
    _labels_np,
    _new_figure,
    _np,
    _scatter_classes,
    _square_limits,
)

# Samples -----------------------------------------------------------------------------------

def scatter_figure(samples: dict, gmm=None, *, title: str | None = None, max_cols: int = 6) -> Figure:
    """One scatter panel per method (``samples[name] = (x (N, 2), labels (N,) or None)``, in order).

    Points are coloured by class (``tab10``); the modes of ``gmm`` are black crosses with 3-std
    circles. All panels share the same square limits, so spread and collapse compare at a glance.
    """
    if not samples:
        raise ValueError("samples must hold at least one method")
    data = {}
    for name, value in samples.items():
        x, y = value if isinstance(value, (tuple, list)) else (value, None)
        x = _np(x)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"scatter_figure needs 2D points (N, 2); {name!r} has shape {tuple(x.shape)}")
        data[name] = (x, _labels_np(y, len(x)))
    n = len(data)
    cols = max(1, min(n, max_cols))
    fig = _new_figure(2.6 * cols + 0.3, 2.6 * math.ceil(n / cols) + (0.6 if title else 0.3) + 0.3)
    axes = _grid(fig, n, max_cols, sharex=True, sharey=True)
    xlim, ylim = _square_limits([x for x, _ in data.values()], gmm)
    classes: set[int] = set()
    for ax, (name, (x, y)) in zip(axes, data.items()):
        _scatter_classes(ax, x, y)
        if gmm is not None:
            _draw_modes(ax, gmm)
        if y is not None:
            classes.update(int(c) for c in np.unique(y))
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_title(str(name), fontsize=10)
        ax.tick_params(labelsize=7)
    if len(classes) > 1:
        fig.legend(handles=_class_handles(sorted(classes)), loc="outside lower center",
                   ncol=min(len(classes), 10, 2 * cols), fontsize=8, frameon=False)  # 2 per panel fit
    if title:
        fig.suptitle(title)
    return fig


def image_grid_array(images, nrow: int, *, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` in [-1, 1] into one uint8 array, ``nrow`` images per row.

    Returns ``(H', W')`` for one channel and ``(H', W', 3)`` for three (torchvision's ``make_grid``
    convention for ``nrow``); empty cells and the ``padding``-pixel gutters take ``pad_value``.
    """
    x = _np(images, np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    p = padding
    grid = np.full((c, rows * (h + p) + p, cols * (w + p) + p), pad_value, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, p + r * (h + p): p + r * (h + p) + h, p + q * (w + p): p + q * (w + p) + w] = x[i]
    grid = np.clip((grid + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def _imshow(ax, array: np.ndarray) -> None:
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")


def _gmm_of(dataset: str):
    from pdmd_lab.data import DATASETS

    d = DATASETS.get(dataset)
    return d.gmm if d is not None else None


def samples_figure(x, labels=None, *, dataset: str = "", title: str | None = None) -> Figure:
    """The figure of ``pdmd-lab sample``: a class-coloured scatter for 2D points, a grid for images.

    ``x`` is ``(N, 2)`` points or ``(N, C, H, W)`` images in [-1, 1]. For 2D datasets with an exact
    mixture (``ring-mix``, ``grid25``) the modes are drawn too.
    """
    arr = _np(x)
    if arr.ndim == 2 and arr.shape[1] == 2:
        gmm = _gmm_of(dataset)
        y = _labels_np(labels, len(arr))
        fig = _new_figure(5, 5.4)
        ax = fig.subplots()
        _scatter_classes(ax, arr, y, s=10, alpha=0.7)
        if gmm is not None:
            _draw_modes(ax, gmm)
        xlim, ylim = _square_limits([arr], gmm)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        if y is not None and len(np.unique(y)) > 1:
            classes = sorted(int(c) for c in np.unique(y))
            fig.legend(handles=_class_handles(classes), loc="outside lower center", ncol=min(len(classes), 5),
                       fontsize=8, frameon=False)
    elif arr.ndim == 4 or arr.ndim == 3:
        n = arr.shape[0]
        nrow = math.ceil(math.sqrt(n))
        grid = image_grid_array(arr, nrow)
        side = min(8.0, max(3.0, 0.5 * nrow + 1))
        fig = _new_figure(side, side * grid.shape[0] / grid.shape[1] + 0.4)
        ax = fig.subplots()
        _imshow(ax, grid)
        ax.set_axis_off()
    else:
        raise ValueError(f"samples must be points (N, 2) or images (N, C, H, W), got {tuple(arr.shape)}")
    if title or dataset:
        fig.suptitle(title or dataset, fontsize=10)
    return fig


def image_grid_figure(rows: dict, *, captions: dict | None = None, title: str | None = None,
                      column_labels=None) -> Figure:
    """Methods as rows, seeds as columns: ``rows[method] = images (N, C, H, W)`` in [-1, 1].

    Column j of every row should come from the same seed / noise, so rows compare one to one.
    The method name labels each row on the left, with ``captions[method]`` (e.g. "NFE 4, 12 ms")
    under it; ``column_labels`` (e.g. ``["seed 0", ...]``) title the columns.
    """
    if not rows:
        raise ValueError("rows must hold at least one method")
    arrays = {name: image_grid_array(imgs, len(imgs)) for name, imgs in rows.items()}
    n_cols = max(len(imgs) for imgs in rows.values())
    width = max(a.shape[1] for a in arrays.values())
    height = sum(a.shape[0] for a in arrays.values())
    fig_w = min(14.0, 0.8 * n_cols + 1.8)
    img_w = fig_w - 1.8  # about 1.8 in go to the row labels
    fig = _new_figure(fig_w, img_w * height / width + (0.45 if title else 0.1)
                      + (0.25 if column_labels else 0))
    axes = np.atleast_1d(fig.subplots(len(rows), 1, squeeze=False,
                                      height_ratios=[a.shape[0] for a in arrays.values()])).ravel()
    for i, (ax, (name, grid)) in enumerate(zip(axes, arrays.items())):
        _imshow(ax, grid)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        caption = (captions or {}).get(name)
        ax.set_ylabel(str(name) if not caption else f"{name}\n{caption}", rotation=0, ha="right", va="center",
                      fontsize=9)
        if i == 0 and column_labels:
            n_img = len(rows[name])
            cell = (grid.shape[1] - 1) / n_img
            ax.set_xticks([0.5 + cell * (j + 0.5) for j in range(len(column_labels))], list(column_labels),
                          fontsize=8)
            ax.xaxis.set_ticks_position("top")
            ax.tick_params(length=0)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig



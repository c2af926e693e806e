"""Figures that take data and return a :class:`matplotlib.figure.Figure`; nothing here trains.

Every function builds a fresh ``Figure`` through matplotlib's object-oriented API, never through
``pyplot``: no global figure registry, no GUI backend, so the same code runs headless in the CLI,
inside Gradio request threads and in notebooks (where a returned figure is displayed by the inline
backend). Save with ``fig.savefig(path)``.

Colours mean the same thing everywhere: classes use ``tab10`` (class c is colour c), methods
have fixed colours and markers (:func:`method_colors`, :func:`method_markers`; two models of one
family get two shades of its colour), experts and phases run along ``plasma`` from noise to
data. Phases and experts are numbered from 1 in every label ("phase 1..K", "expert 1..K"), as in
the paper; ``Student.expert_index`` is 0-based.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch

from pdmd_lab import flow

LOGSNR_CLIP = 12.0  # log-SNR is -inf at t = 1 and +inf at t = 0; axes clip it here
PHASE_SHADES = ("#dbe6f4", "#f8e3cf")  # alternating phase backgrounds
METHOD_COLORS = {  # fixed colours, matched on the start of a method's name
    "teacher": "#4d4d4d",
    "oracle": "#4d4d4d",
    "data": "#9e9e9e",
    "dmd2-sgts": "#ff7f0e",
    "dmd2": "#ff7f0e",
    "dmd": "#d62728",
    "phased-dmd": "#1f77b4",
    "dp-dmd": "#2ca02c",
}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")


# Helpers ---------------------------------------------------------------------------------------

def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x, dtype=dtype)


def _labels_np(labels, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = _np(labels, np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"labels must hold one entry per point ({n}), got {len(y)}")
    return y


def class_color(c: int):
    """Colour of class ``c``: ``tab10`` colour ``c mod 10``."""
    from matplotlib import colormaps

    return colormaps["tab10"](int(c) % 10)


def _shade(color, amount: float) -> str:
    """``color`` mixed with white (``amount > 0``) or black (``amount < 0``) by ``|amount|``."""
    from matplotlib.colors import to_hex

    rgb = np.array(to_rgba(color)[:3])
    target = 1.0 if amount > 0 else 0.0
    return to_hex(rgb + abs(amount) * (target - rgb))


_SHADES = (0.0, -0.4, 0.45, -0.65, 0.7)  # variants of a family colour: base, darker, lighter, ...
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def method_colors(methods) -> dict[str, str]:
    """A distinct colour per method name (``teacher`` grey, ``dmd`` red, ``phased-dmd`` blue, ...).

    Names are matched on their start (longest known prefix), so ``"phased-dmd 4/4"`` is blue. The
    first name of a family takes the family colour; further names of the same family (``phased-dmd-4s2p``
    after ``phased-dmd-4s4p``, ``teacher 4 steps`` after ``teacher 50 steps``) take darker / lighter
    shades of it, so no two names share a colour. Unknown names take the next colour of a spare palette.
    """
    out, spare = {}, iter(_EXTRA_COLORS * (1 + len(methods) // len(_EXTRA_COLORS)))
    prefixes = sorted(METHOD_COLORS, key=len, reverse=True)
    seen: dict[str, int] = {}
    for m in dict.fromkeys(methods):
        key = next((p for p in prefixes if str(m).lower().startswith(p)), None)
        if key is None:
            out[m] = next(spare)
            continue
        base = METHOD_COLORS[key]
        j = seen.get(base, 0)
        seen[base] = j + 1
        out[m] = base if j == 0 else _shade(base, _SHADES[j % len(_SHADES)] or 0.25)
    return out


def method_markers(methods) -> dict[str, str]:
    """A distinct marker per method name, in order of first appearance (``o``, ``s``, ``^``, ...)."""
    names = list(dict.fromkeys(methods))
    return {m: METHOD_MARKERS[i % len(METHOD_MARKERS)] for i, m in enumerate(names)}


def expert_colors(num_experts: int) -> list:
    """One colour per expert / phase along ``plasma``, from noise (dark) to data (light)."""
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    if num_experts == 1:
        return [cmap(0.15)]
    return [cmap(0.05 + 0.65 * k / (num_experts - 1)) for k in range(num_experts)]


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _grid(fig: Figure, n: int, max_cols: int, **kwargs):
    """``n`` axes in rows of at most ``max_cols``; unused cells are hidden. Returns a flat list."""
    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kwargs)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _clipped_logsnr(t) -> np.ndarray:
    t = torch.as_tensor(_np(t), dtype=torch.float64)
    return flow.logsnr(t).clamp(-LOGSNR_CLIP, LOGSNR_CLIP).numpy()


def _shade_phases(ax, spans, *, label_y: float = 0.98, fontsize: float = 8) -> None:
    """Shade ``spans = [(x_lo, x_hi), ...]`` (phase 1 first) in alternating colours, labelled at the top."""
    lo, hi = ax.get_xlim()
    width = abs(hi - lo) or 1.0
    for k, (a, b) in enumerate(spans):
        ax.axvspan(a, b, color=PHASE_SHADES[k % 2], zorder=0, lw=0)
        frac = abs(b - a) / width
        text = f"phase {k + 1}" if frac > 0.09 else f"{k + 1}"
        if frac > 0.02:
            ax.text((a + b) / 2, label_y, text, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=fontsize, color="#333333", zorder=6,
                    bbox=dict(fc=PHASE_SHADES[k % 2], ec="none", pad=1.0))


def _draw_modes(ax, gmm, num_std: float = 3.0) -> None:
    """Mode centres of a 2D mixture as black crosses with ``num_std``-standard-deviation circles."""
    means, stds = _np(gmm.means), _np(gmm.stds)
    if means.shape[1] != 2:
        return
    for (mx, my), s in zip(means, stds):
        ax.add_patch(Circle((mx, my), num_std * s, fill=False, ec="black", lw=0.6, alpha=0.5, zorder=3))
    ax.scatter(means[:, 0], means[:, 1], marker="x", c="black", s=25, lw=1.2, zorder=4)


def _square_limits(points: list[np.ndarray], gmm=None, margin: float = 0.08) -> tuple[tuple, tuple]:
    """Common square limits covering the bulk (0.5-99.5 percentiles) of all points and every mode circle."""
    xy = np.concatenate([p for p in points if len(p)], 0) if any(len(p) for p in points) else np.zeros((1, 2))
    xy = xy[np.isfinite(xy).all(1)]
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    if gmm is not None and _np(gmm.means).shape[1] == 2:
        r = 3 * _np(gmm.stds)[:, None]
        lo = np.minimum(lo, (_np(gmm.means) - r).min(0))
        hi = np.maximum(hi, (_np(gmm.means) + r).max(0))
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-3) * (1 + margin)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _class_handles(classes) -> list:
    return [Line2D([], [], ls="", marker="o", ms=5, color=class_color(c), label=f"class {c}")
            for c in classes]


def _scatter_classes(ax, x: np.ndarray, y: np.ndarray | None, *, s: float = 6, alpha: float = 0.6) -> None:
    colors = "#555555" if y is None else [class_color(c) for c in y]
    ax.scatter(x[:, 0], x[:, 1], s=s, c=colors, alpha=alpha, lw=0, zorder=2)


# SNR and phases --------------------------------------------------------------------------------

def _unshift(t: np.ndarray, shift: float) -> np.ndarray:
    """Inverse of :func:`pdmd_lab.flow.shift_time`: the ``u`` with ``shift(u; s) = t``."""
    return t / (shift - (shift - 1) * t)


def snr_figure(step_times=None, boundaries=None, *, shifts=(1.0,), ax=None) -> Figure:
    """SNR and log-SNR against time, with step times and phase subintervals marked.

    One curve per time shift ``s`` in ``shifts``, drawn against the schedule position ``u`` with
    ``t = shift(u; s)`` (with the single shift 1 the axis is simply ``t``). ``step_times`` are drawn
    as vertical lines with dots on the first shift's curve, ``boundaries`` ``1 = t_0 > ... > t_K = 0``
    as shaded subintervals labelled "phase 1..K"; both are times ``t``, placed at their ``u`` under
    ``shifts[0]``. ``ax``: a pair of axes (SNR, log-SNR) or one axes (log-SNR only) to draw into.
    """
    if not shifts or any(s <= 0 for s in shifts):
        raise ValueError(f"shifts must be a non-empty sequence of positive numbers, got {shifts!r}")
    if ax is None:
        fig = _new_figure(10, 3.6)
        axes = list(fig.subplots(1, 2))
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        fig = axes[0].figure
    panels = [("snr", axes[0]), ("logsnr", axes[1])] if len(axes) == 2 else [("logsnr", axes[0])]

    u = np.linspace(1e-4, 1 - 1e-4, 600)
    s0 = float(shifts[0])
    plain = tuple(shifts) == (1.0,)
    snr_top = 10.0
    for kind, a in panels:
        a.set_xlim(0, 1)
        if boundaries is not None:
            b = _np(boundaries)
            _shade_phases(a, [(_unshift(b[k + 1], s0), _unshift(b[k], s0)) for k in range(len(b) - 1)])
        for s in shifts:
            t = torch.as_tensor(flow.shift_time(u, float(s)), dtype=torch.float64)
            y = flow.snr(t).numpy() if kind == "snr" else flow.logsnr(t).numpy()
            a.plot(u, y, lw=1.8, label="_curve" if plain else f"shift {s:g}", zorder=3)
        if step_times is not None:
            ts = _np(step_times)
            us = _unshift(ts, s0)
            ys = flow.snr(torch.as_tensor(ts)).numpy() if kind == "snr" else _clipped_logsnr(ts)
            for ui in us:
                a.axvline(ui, color="#555555", lw=0.8, ls="--", zorder=2)
            keep = np.isfinite(ys)
            a.scatter(us[keep], ys[keep], c="black", s=22, zorder=5, clip_on=kind != "snr",
                      label="step times")
        if kind == "snr":
            a.set_ylim(0, snr_top)
            a.set_ylabel(f"SNR = ((1 - t) / t)²  (clipped at {snr_top:g})")
            a.set_title("signal-to-noise ratio")
        else:
            a.set_ylim(-LOGSNR_CLIP, LOGSNR_CLIP)
            a.axhline(0, color="#999999", lw=0.6, zorder=1)
            a.set_ylabel("log-SNR = 2 log((1 - t) / t)")
            a.set_title("log-SNR")
        a.set_xlabel("t   (0 = data, 1 = noise)" if plain else "u   (t = shift(u; s))")
        if not plain or step_times is not None:
            a.legend(loc="lower left" if kind == "logsnr" else "center right", fontsize=8)
    return fig


def phases_figure(num_steps: int, phase_counts=(1, 2, 4), shift: float = 1.0) -> Figure:
    """Step times and phase subintervals on the log-SNR axis, one row per number of phases.

    Each row splits the ``num_steps`` Euler steps into K phases (:func:`pdmd_lab.flow.phase_boundaries`);
    log-SNR is clipped to ±12 at ``t = 1`` (noise, left) and ``t = 0`` (data, right).
    """
    ts = flow.step_times(num_steps, shift)
    rows = list(phase_counts)
    if not rows:
        raise ValueError("phase_counts must name at least one number of phases")
    fig = _new_figure(9, 0.3 + 1.05 * len(rows))
    axes = np.atleast_1d(fig.subplots(len(rows), 1, sharex=True, squeeze=False)).ravel()
    x_steps = _clipped_logsnr(ts)
    for ax, k in zip(axes, rows):
        b = _clipped_logsnr(flow.phase_boundaries(num_steps, k, shift))
        ax.set_xlim(-LOGSNR_CLIP - 0.5, LOGSNR_CLIP + 0.5)
        _shade_phases(ax, [(b[j], b[j + 1]) for j in range(len(b) - 1)], label_y=0.95)
        for xb in b[1:-1]:
            ax.axvline(xb, color="#333333", lw=1.2)
        ax.axhline(0, color="#999999", lw=0.6, zorder=1)
        ax.scatter(x_steps, np.zeros_like(x_steps), c="black", s=22, zorder=3)
        for i, (xs, t) in enumerate(zip(x_steps, ts.tolist())):
            if num_steps <= 16 or i in (0, num_steps):  # alternate below / above so neighbours do not collide
                up = i % 2 == 1 and num_steps > 4
                ax.annotate(f"t={t:.2f}", (xs, 0), xytext=(0, 5 if up else -5), textcoords="offset points",
                            ha="center", va="bottom" if up else "top", fontsize=7, color="#333333")
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_ylabel(f"K = {k}", rotation=0, ha="right", va="center")
    ticks = [-LOGSNR_CLIP] + [v for v in range(-8, 9, 4)] + [LOGSNR_CLIP]
    axes[-1].set_xticks(ticks, ["−∞\n(t=1)"] + [str(v) for v in ticks[1:-1]] + ["+∞\n(t=0)"])
    axes[-1].set_xlabel("log-SNR   (noise → data)")
    shift_txt = f", shift {shift:g}" if shift != 1.0 else ""
    axes[0].set_title(f"{num_steps} Euler steps split into K phases{shift_txt}", fontsize=10)
    return fig


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


# Trajectories ----------------------------------------------------------------------------------

def trajectory_figure(traj: list, expert_index: list[int], *, gmm=None, labels=None, dataset: str = "",
                      step_times=None, max_samples: int = 6) -> Figure:
    """Samples on their way from noise to data, coloured by the expert that moved them.

    ``traj = [x_{t_0}, x_{t_1}, ..., x_{t_N}]`` (from ``student.sample(..., return_trajectory=True)``)
    and ``expert_index[i]`` is the 0-based expert of step i (``student.expert_index(step_times[i])``).
    2D points: one polyline per sample, segment i coloured by its expert, noise start grey, end
    coloured by class, modes of ``gmm`` (or of ``dataset``'s mixture) in black. Images: a row per
    sample (the first ``max_samples``), a column per state titled with its ``t`` and the expert that
    produced it. ``step_times`` default to ``N`` uniform Euler steps.
    """
    states = [_np(s) for s in traj]
    n_steps = len(states) - 1
    if n_steps < 1:
        raise ValueError("traj must hold at least two states [x_{t_0}, x_{t_1}, ...]")
    expert_index = [int(k) for k in expert_index]
    if len(expert_index) != n_steps:
        raise ValueError(f"expert_index needs one entry per step ({n_steps}), got {len(expert_index)}")
    ts = _np(flow.step_times(n_steps) if step_times is None else step_times)
    if len(ts) != n_steps + 1:
        raise ValueError(f"step_times needs {n_steps + 1} entries, got {len(ts)}")
    num_experts = max(expert_index) + 1
    colors = expert_colors(num_experts)
    gmm = gmm if gmm is not None else _gmm_of(dataset)
    first = states[0]
    y = _labels_np(labels, len(first))

    if first.ndim == 2 and first.shape[1] == 2:
        path = np.stack(states, 1)  # (B, N + 1, 2)
        fig = _new_figure(5.6, 5.8)
        ax = fig.subplots()
        if gmm is not None:
            _draw_modes(ax, gmm)
        for i, k in enumerate(expert_index):
            segs = path[:, i: i + 2]  # (B, 2, 2)
            ax.add_collection(LineCollection(segs, colors=[to_rgba(colors[k], 0.75)], lw=1.1, zorder=2))
        mid = path[:, 1:-1].reshape(-1, 2)
        ax.scatter(mid[:, 0], mid[:, 1], s=6, c="#333333", lw=0, zorder=3)
        ax.scatter(first[:, 0], first[:, 1], s=14, c="#bbbbbb", edgecolors="#777777", lw=0.4, zorder=3)
        end = path[:, -1]
        ax.scatter(end[:, 0], end[:, 1], s=22, c="#333333" if y is None else [class_color(c) for c in y],
                   edgecolors="black", lw=0.5, zorder=4)
        xlim, ylim = _square_limits([path.reshape(-1, 2)], gmm, margin=0.04)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        handles = [Line2D([], [], color=colors[k], lw=2,
                          label=f"expert {k + 1}: steps " + ", ".join(str(i + 1) for i, e in
                                                                      enumerate(expert_index) if e == k))
                   for k in sorted(set(expert_index))]
        handles += [
            Line2D([], [], ls="", marker="o", ms=5, mfc="#bbbbbb", mec="#777777", label=r"noise $x_{t_0}$"),
            Line2D([], [], ls="", marker="o", ms=6, mfc="white", mec="black", label=r"output $x_{t_N}$"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
        ax.set_title(f"{n_steps}-step trajectories, {num_experts} expert(s)", fontsize=10)
        return fig

    if first.ndim not in (3, 4):
        raise ValueError(f"trajectory states must be points (B, 2) or images (B, C, H, W), got {first.shape}")
    b = min(len(first), max_samples)
    fig = _new_figure(1.15 * (n_steps + 1) + 0.6, 1.15 * b + 0.5)
    axes = fig.subplots(b, n_steps + 1, squeeze=False)
    for j, s in enumerate(states):
        who = "noise" if j == 0 else f"expert {expert_index[j - 1] + 1}"
        for r in range(b):
            ax = axes[r, j]
            _imshow(ax, image_grid_array(s[r: r + 1], 1, padding=0))
            ax.set_xticks([])
            ax.set_yticks([])
            if j > 0:
                for side in ax.spines.values():
                    side.set_edgecolor(colors[expert_index[j - 1]])
                    side.set_linewidth(2)
        axes[0, j].set_title(f"t={ts[j]:.2f}\n{who}", fontsize=8)
    if y is not None:
        for r in range(b):
            axes[r, 0].set_ylabel(f"class {y[r]}", fontsize=8)
    return fig


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


# What the teacher predicts along t ---------------------------------------------------------------

def _phase_of(t: float, boundaries) -> int:
    """0-based phase whose subinterval ``(t_k, t_{k-1}]`` holds ``t`` (``t = 1`` is phase 0)."""
    b = _np(boundaries)
    return int(min(len(b) - 2, max(0, np.searchsorted(-b, -t, side="right") - 1)))


def denoiser_predictions(gmm, ts, *, labels=None, n: int = 300, seed: int = 0, velocity=None) -> list[dict]:
    """The teacher's clean-data prediction ``x0_hat = x_t - t v(x_t, t)`` along the noise path of one draw.

    ``n`` points ``x0`` of ``gmm`` (class ``labels``: an int, ``(n,)`` labels, or None for the
    unconditional mixture) and one noise ``eps``; per ``t`` in ``ts``: ``x_t = (1 - t) x0 + t eps`` and
    the prediction of ``velocity(x, t, labels)`` (default: the exact oracle ``gmm.velocity``). Returns
    ``[{"t", "x_t", "x0_hat", "near_mode"}]`` with ``near_mode`` the share of predictions within 3
    standard deviations of a mode. At ``t = 1`` every prediction is the data mean ``E[x0]``.
    """
    g = torch.Generator().manual_seed(int(seed))
    if labels is None or isinstance(labels, (int, np.integer)):
        lab = None if labels is None else torch.full((n,), int(labels), dtype=torch.long)
    else:
        lab = torch.as_tensor(labels, dtype=torch.long)
        n = len(lab)
    x0, _ = gmm.sample(n, seed=g, labels=lab)
    eps = torch.randn(x0.shape, generator=g)
    velocity = velocity if velocity is not None else gmm.velocity
    out = []
    for t in ts:
        t = float(t)
        x_t = flow.add_noise(x0, eps, t)
        with torch.no_grad():
            x0_hat = flow.x0_from_velocity(x_t, velocity(x_t, t, lab), t)
        near = float((gmm.assign_modes(x0_hat) >= 0).float().mean())
        out.append({"t": t, "x_t": x_t, "x0_hat": x0_hat, "near_mode": near})
    return out


def _data_mean(gmm, labels) -> np.ndarray:
    lab = None if labels is None else torch.as_tensor(labels).reshape(-1)[:1]
    return _np(gmm.mode_weights(lab)[0] @ gmm.means)


def _draw_prediction(ax, state: dict, gmm, mean: np.ndarray, color) -> None:
    x_t, x0_hat = _np(state["x_t"]), _np(state["x0_hat"])
    _draw_modes(ax, gmm)
    ax.add_collection(LineCollection(np.stack([x_t, x0_hat], 1), colors=[to_rgba("#888888", 0.25)], lw=0.5,
                                     zorder=1))
    ax.scatter(x_t[:, 0], x_t[:, 1], s=4, c="#b0b0b0", lw=0, zorder=2)
    ax.scatter(x0_hat[:, 0], x0_hat[:, 1], s=9, color=color, lw=0, zorder=5)
    ax.scatter([mean[0]], [mean[1]], marker="*", s=140, c="white", edgecolors="black", lw=1.0, zorder=6)


def denoiser_figure(gmm, ts=(0.95, 0.8, 0.6, 0.4, 0.2, 0.05), *, labels=None, boundaries=None, n: int = 300,
                    seed: int = 0, velocity=None, max_cols: int = 6, title: str | None = None) -> Figure:
    """Where the teacher sends ``x_t`` at each noise level: one panel per ``t`` (see :func:`denoiser_predictions`).

    Grey: the noisy points ``x_t``; coloured: the teacher's predictions ``x0_hat``, joined to their
    ``x_t``; the white star is the data mean, the black crosses the modes. At high noise the predictions
    gather at the mean (the teacher cannot yet tell the modes apart), at low noise they sit on the modes.
    With ``boundaries`` (a phase boundary list ``1 = t_0 > ... > t_K = 0``) predictions and panel frames
    take the colour of the phase (expert) whose subinterval holds ``t``. Titles give ``t``, log-SNR and
    the share of predictions near a mode.
    """
    states = denoiser_predictions(gmm, ts, labels=labels, n=n, seed=seed, velocity=velocity)
    colors = expert_colors(len(boundaries) - 1) if boundaries is not None else None
    mean = _data_mean(gmm, labels)
    cols = max(1, min(len(states), max_cols))
    fig = _new_figure(2.5 * cols + 0.3, 2.75 * math.ceil(len(states) / cols) + (0.7 if title else 0.3))
    axes = _grid(fig, len(states), max_cols, sharex=True, sharey=True)
    xlim, ylim = _square_limits([_np(s["x_t"]) for s in states] + [_np(s["x0_hat"]) for s in states], gmm)
    for ax, s in zip(axes, states):
        k = _phase_of(s["t"], boundaries) if boundaries is not None else None
        color = colors[k] if k is not None else "#1f77b4"
        _draw_prediction(ax, s, gmm, mean, color)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        phase = f", phase {k + 1}" if k is not None else ""
        ax.set_title(f"t = {s['t']:.2f} (log-SNR {float(_clipped_logsnr(s['t'])):.1f}){phase}\n"
                     f"{100 * s['near_mode']:.0f}% of predictions near a mode", fontsize=8)
        if k is not None:
            for side in ax.spines.values():
                side.set_edgecolor(color)
                side.set_linewidth(2.5)
    handles = [Line2D([], [], ls="", marker="o", ms=4, color="#b0b0b0", label="noisy x_t"),
               Line2D([], [], ls="", marker="o", ms=5, color="#1f77b4" if colors is None else colors[0],
                      label="teacher's x0 prediction"),
               Line2D([], [], ls="", marker="*", ms=10, mfc="white", mec="black", label="data mean"),
               Line2D([], [], ls="", marker="x", ms=6, color="black", label="modes")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# Animations ------------------------------------------------------------------------------------

def _frame_plan(n_steps: int, frames_per_step: int | None, hold_start: int, hold_end: int) -> list[tuple[int, float]]:
    """(step i, fraction a of it) per frame: a still start, ``frames_per_step`` per step, a still end."""
    f = max(1, 24 // n_steps) if frames_per_step is None else int(frames_per_step)
    if f < 1:
        raise ValueError(f"frames_per_step must be >= 1, got {frames_per_step!r}")
    plan = [(0, 0.0)] * hold_start
    plan += [(i, (j + 1) / f) for i in range(n_steps) for j in range(f)]
    return plan + [(n_steps - 1, 1.0)] * hold_end


def trajectory_animation(traj: list, expert_index: list[int], *, gmm=None, labels=None, dataset: str = "",
                         step_times=None, frames_per_step: int | None = None, hold_start: int = 3,
                         hold_end: int = 8, max_samples: int = 8, interval: int = 100, title: str | None = None):
    """The trajectory of :func:`trajectory_figure` as a :class:`matplotlib.animation.FuncAnimation`.

    ``traj = [x_{t_0}, ..., x_{t_N}]`` and ``expert_index[i]`` (0-based) as for
    :func:`trajectory_figure`. Between two states the frames interpolate linearly (exact for Euler
    steps, which move along straight lines). 2D points: the moving points take the colour of the
    expert moving them, each sample leaves a trail coloured by expert, and the last frames colour the
    outputs by class. Images: the first ``max_samples`` samples side by side, framed in the colour of
    the active expert. The title gives ``t`` and the expert. ``frames_per_step`` defaults to
    ``24 // N`` (at least 1). Save with :func:`animation_to_gif` (Pillow, no ffmpeg needed) or
    ``anim.to_jshtml()``.
    """
    from matplotlib.animation import FuncAnimation
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    states = [_np(s) for s in traj]
    n_steps = len(states) - 1
    if n_steps < 1:
        raise ValueError("traj must hold at least two states [x_{t_0}, x_{t_1}, ...]")
    expert_index = [int(k) for k in expert_index]
    if len(expert_index) != n_steps:
        raise ValueError(f"expert_index needs one entry per step ({n_steps}), got {len(expert_index)}")
    ts = _np(flow.step_times(n_steps) if step_times is None else step_times)
    if len(ts) != n_steps + 1:
        raise ValueError(f"step_times needs {n_steps + 1} entries, got {len(ts)}")
    colors = expert_colors(max(expert_index) + 1)
    plan = _frame_plan(n_steps, frames_per_step, hold_start, hold_end)
    first = states[0]
    y = _labels_np(labels, len(first))
    gmm = gmm if gmm is not None else _gmm_of(dataset)

    def caption(i: int, a: float) -> str:
        t = ts[i] + a * (ts[i + 1] - ts[i])
        if a == 0.0 and i == 0:
            return f"t = {t:.2f}: noise"
        return f"step {i + 1}/{n_steps}, t = {t:.2f}: expert {expert_index[i] + 1}"

    if first.ndim == 2 and first.shape[1] == 2:
        path = np.stack(states, 1)  # (B, N + 1, 2)
        fig = _new_figure(4.6, 4.9)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        if gmm is not None:
            _draw_modes(ax, gmm)
        trails = [ax.add_collection(LineCollection([], colors=[to_rgba(colors[k], 0.55)], lw=0.8, zorder=2))
                  for k in expert_index]
        dots = ax.scatter(first[:, 0], first[:, 1], s=12, c="#999999", lw=0, zorder=4)
        end_colors = (np.array([to_rgba("#333333")] * len(first)) if y is None
                      else np.array([to_rgba(class_color(c)) for c in y]))
        xlim, ylim = _square_limits([path.reshape(-1, 2)], gmm, margin=0.04)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        handles = [Line2D([], [], color=colors[k], lw=2, label=f"expert {k + 1}") for k in sorted(set(expert_index))]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8,
                   frameon=False)
        head = ax.set_title("", fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)

        def update(frame: int):
            i, a = plan[frame]
            pos = path[:, i] + a * (path[:, i + 1] - path[:, i])
            for k, lc in enumerate(trails):
                if k < i:
                    lc.set_segments(list(path[:, k: k + 2]))
                elif k == i and a > 0:
                    lc.set_segments(list(np.stack([path[:, i], pos], 1)))
                else:
                    lc.set_segments([])
            dots.set_offsets(pos)
            done = i == n_steps - 1 and a == 1.0
            dots.set_facecolor(end_colors if done else ("#999999" if a == 0.0 and i == 0
                                                        else colors[expert_index[i]]))
            head.set_text(caption(i, a) + ("  (outputs by class)" if done and y is not None else ""))
            return [*trails, dots, head]
    elif first.ndim in (3, 4):
        b = min(len(first), max_samples)
        seq = [s[:b] for s in states]
        grid0 = image_grid_array(seq[0], b)
        fig = _new_figure(min(10.0, 1.1 * b + 0.4), 1.1 * grid0.shape[0] / grid0.shape[1] * b + 0.6)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        im = ax.imshow(grid0, cmap="gray" if grid0.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        head = ax.set_title("", fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)

        def update(frame: int):
            i, a = plan[frame]
            im.set_data(image_grid_array(seq[i] + a * (seq[i + 1] - seq[i]), b))
            color = "#999999" if (i == 0 and a == 0.0) else colors[expert_index[i]]
            for side in ax.spines.values():
                side.set_edgecolor(color)
                side.set_linewidth(3)
            head.set_text(caption(i, a))
            return [im, head]
    else:
        raise ValueError(f"trajectory states must be points (B, 2) or images (B, C, H, W), got {first.shape}")
    update(0)
    return FuncAnimation(fig, update, frames=len(plan), interval=interval, blit=False, repeat=True)


def denoiser_animation(gmm, *, boundaries=None, labels=None, n: int = 200, seed: int = 0, frames: int = 36,
                       velocity=None, interval: int = 120, hold_end: int = 6, title: str | None = None):
    """:func:`denoiser_figure` as a :class:`matplotlib.animation.FuncAnimation`, ``t`` sweeping from 1 to 0.

    Left: ``x_t`` (grey) and the teacher's prediction ``x0_hat`` (coloured by the phase holding ``t``
    when ``boundaries`` are given). Right: log-SNR against ``t`` with the phases shaded and the current
    ``t`` marked, so the jump of the predictions from the data mean to the modes can be read against the
    subinterval each expert owns. Save with :func:`animation_to_gif`.
    """
    from matplotlib.animation import FuncAnimation
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames!r}")
    ts = np.linspace(0.999, 0.0, frames)
    states = denoiser_predictions(gmm, ts, labels=labels, n=n, seed=seed, velocity=velocity)
    colors = expert_colors(len(boundaries) - 1) if boundaries is not None else None
    mean = _data_mean(gmm, labels)
    fig = _new_figure(7.4, 4.0)
    FigureCanvasAgg(fig)
    ax, ax_t = fig.subplots(1, 2, width_ratios=[1.0, 0.8])
    xlim, ylim = _square_limits([_np(s["x_t"]) for s in states] + [_np(s["x0_hat"]) for s in states], gmm)
    grid_t = np.linspace(0.002, 0.998, 300)
    ax_t.set_xlim(1.0, 0.0)
    ax_t.set_ylim(-LOGSNR_CLIP / 2, LOGSNR_CLIP / 2)
    if boundaries is not None:
        b = _np(boundaries)
        _shade_phases(ax_t, [(b[k], b[k + 1]) for k in range(len(b) - 1)])
    ax_t.plot(grid_t, _clipped_logsnr(grid_t), color="black", lw=1.2)
    ax_t.set_xlabel("t (noise to data)", fontsize=8)
    ax_t.set_ylabel("log-SNR", fontsize=8)
    ax_t.tick_params(labelsize=7)
    marker = ax_t.axvline(1.0, color="#d62728", lw=1.5)

    def update(frame: int):
        s = states[min(frame, len(states) - 1)]
        ax.clear()
        k = _phase_of(s["t"], boundaries) if boundaries is not None else None
        color = colors[k] if k is not None else "#1f77b4"
        _draw_prediction(ax, s, gmm, mean, color)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        phase = f", phase {k + 1}" if k is not None else ""
        ax.set_title(f"t = {s['t']:.2f}{phase}: {100 * s['near_mode']:.0f}% of the teacher's\n"
                     "x0 predictions near a mode", fontsize=9)
        marker.set_xdata([s["t"], s["t"]])
        return [marker]

    if title:
        fig.suptitle(title, fontsize=10)
    update(0)
    return FuncAnimation(fig, update, frames=len(states) + hold_end, interval=interval, blit=False, repeat=True)


def animation_to_gif(anim, path=None, *, fps: float | None = None, dpi: int = 72) -> bytes:
    """Render ``anim`` to an animated GIF with Pillow (no ffmpeg); write it to ``path`` when given.

    Returns the GIF's bytes (``IPython.display.Image(data=..., format="gif")`` shows them in a
    notebook; the app serves the file). ``fps`` defaults to the animation's own interval.
    """
    import tempfile

    from matplotlib.animation import PillowWriter
    from PIL import Image

    class _Writer(PillowWriter):
        """Pillow's GIF writer with a per-frame palette and no dithering: far smaller files for plots."""

        def finish(self):
            # One palette for all frames (from the last one, which has every colour of the plot), so
            # that Pillow stores each frame as its difference from the previous one.
            palette = self._frames[-1].convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
            frames = [f.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in self._frames]
            frames[0].save(self.outfile, save_all=True, append_images=frames[1:], duration=int(1000 / self.fps),
                           loop=0, optimize=True)

    colors = 64
    fps = fps if fps is not None else 1000.0 / max(1, getattr(anim, "_interval", 100))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "anim.gif"
        anim.save(str(out), writer=_Writer(fps=fps), dpi=dpi)
        data = out.read_bytes()
    if path is not None:
        Path(path).write_bytes(data)
    return data

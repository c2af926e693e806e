"""Colours, markers and the small drawing helpers every figure shares."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

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
    return _tab10(int(c) % 10)


@functools.lru_cache(maxsize=None)
def _tab10(i: int) -> tuple:
    # matplotlib's colormap registry hands out a copy per lookup (~0.2 ms): a scatter colouring 2,000 points
    # by class paid it once per point; the ten colours are looked up once per process instead
    from matplotlib import colormaps

    return colormaps["tab10"](i)


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



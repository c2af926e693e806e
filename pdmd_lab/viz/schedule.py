"""The SNR curve and the phases of a schedule (teaching figures of the notebooks and the app)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from pdmd_lab import flow
from pdmd_lab.viz.base import LOGSNR_CLIP, _clipped_logsnr, _new_figure, _np, _shade_phases

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



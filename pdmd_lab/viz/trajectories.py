"""Sampling trajectories in the plane, and what the teacher predicts along t (denoiser figures)."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pdmd_lab import flow
from pdmd_lab.viz.base import (
    _clipped_logsnr,
    _draw_modes,
    _grid,
    _labels_np,
    _new_figure,
    _np,
    _square_limits,
    class_color,
    expert_colors,
)
from pdmd_lab.viz.samples import _gmm_of, _imshow, image_grid_array

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
    states, expert_index, ts = _checked_trajectory(traj, expert_index, step_times)
    n_steps = len(states) - 1
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


def _checked_trajectory(traj, expert_index, step_times):
    """``(states, expert_index, ts)`` of a routed trajectory, checked: at least two states, one expert per
    step, one time per state (``step_times`` default to uniform Euler steps)."""
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
    return states, expert_index, ts

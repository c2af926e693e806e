"""Animations of sampling trajectories and of the denoiser along t, and GIF export."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

from pdmd_lab.viz.base import (
    LOGSNR_CLIP,
    _clipped_logsnr,
    _draw_modes,
    _labels_np,
    _new_figure,
    _np,
    _shade_phases,
    _square_limits,
    class_color,
    expert_colors,
)
from pdmd_lab.viz.samples import _gmm_of, image_grid_array
from pdmd_lab.viz.trajectories import (
    _checked_trajectory,
    _data_mean,
    _draw_prediction,
    _phase_of,
    denoiser_predictions,
)

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

    states, expert_index, ts = _checked_trajectory(traj, expert_index, step_times)
    n_steps = len(states) - 1
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

        def grab_frame(self, **savefig_kwargs):
            # ``savefig`` of a figure with a layout engine draws each frame twice (a dry draw that places the
            # layout, then the real one, which places it again): one real draw at the writer's resolution,
            # read from the canvas, gives the same pixels in about two thirds of the time
            fig, canvas = self.fig, self.fig.canvas
            if savefig_kwargs or not hasattr(canvas, "buffer_rgba"):
                return super().grab_frame(**savefig_kwargs)
            dpi, ratio, saving = fig.dpi, getattr(canvas, "_device_pixel_ratio", 1), canvas._is_saving
            fig.dpi, canvas._device_pixel_ratio, canvas._is_saving = self.dpi, 1, True
            try:
                canvas.draw()
                im = Image.frombuffer("RGBA", self.frame_size, canvas.buffer_rgba(), "raw", "RGBA", 0, 1).copy()
            finally:
                fig.dpi, canvas._device_pixel_ratio, canvas._is_saving = dpi, ratio, saving
            self._frames.append(im if im.getextrema()[3][0] < 255 else im.convert("RGB"))

        def finish(self):
            # One palette for all frames (from the last one, which has every colour of the plot), so
            # that Pillow stores each frame as its difference from the previous one.
            palette = self._frames[-1].convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
            frames = [f.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in self._frames]
            frames[0].save(self.outfile, save_all=True, append_images=frames[1:], duration=int(1000 / self.fps),
                           loop=0, optimize=True)

    colors = 64
    fps = fps if fps is not None else 1000.0 / max(1, getattr(anim, "_interval", 100))
    # The writer draws each frame when it saves it; matplotlib also asks the canvas for an idle redraw
    # after each frame (for animations on screen), a second full draw per frame that no GIF shows: off
    # while saving, the same bytes in ~40% less time.
    canvas = anim._fig.canvas
    with tempfile.TemporaryDirectory() as tmp, _no_idle_draw(canvas):
        out = Path(tmp) / "anim.gif"
        anim.save(str(out), writer=_Writer(fps=fps), dpi=dpi)
        data = out.read_bytes()
    if path is not None:
        Path(path).write_bytes(data)
    return data


@contextmanager
def _no_idle_draw(canvas):
    """``canvas.draw_idle`` does nothing inside the block (an explicit ``draw`` or ``savefig`` still draws)."""
    own = vars(canvas).get("draw_idle")  # None: the class's method
    canvas.draw_idle = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if own is None:
            del canvas.draw_idle
        else:
            canvas.draw_idle = own

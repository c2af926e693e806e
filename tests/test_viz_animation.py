"""Figures added for the interactive faces: distinct colours and markers, the within-class embedding
view and the trajectory animation (rendered to GIF with Pillow)."""

import gc
import io

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from PIL import Image

from pdmd_lab import flow, viz
from pdmd_lab.data import ring_mix
from pdmd_lab.nets import MLPConfig, MLPDenoiser
from pdmd_lab.student import PhasedStudent

MODELS = ["teacher 50 steps", "teacher 4 steps", "dmd-1s", "dmd2-sgts-4s", "phased-dmd-4s4p", "phased-dmd-4s2p",
          "dp-dmd-4s", "data (held-out)"]


def test_every_model_gets_its_own_colour_and_marker():
    colors, markers = viz.method_colors(MODELS), viz.method_markers(MODELS)
    assert len(set(colors.values())) == len(MODELS)
    assert len(set(markers.values())) == len(MODELS)
    assert colors["phased-dmd-4s4p"] == viz.METHOD_COLORS["phased-dmd"]  # the first of a family keeps its colour
    assert colors["teacher 50 steps"] == viz.METHOD_COLORS["teacher"]
    assert colors["phased-dmd-4s2p"] != colors["phased-dmd-4s4p"]  # the second gets a shade of it
    assert viz.method_colors(["phased-dmd-4s2p"])["phased-dmd-4s2p"] == viz.METHOD_COLORS["phased-dmd"]


def test_embedding_figure_marks_methods_by_colour_and_marker():
    rng = np.random.default_rng(0)
    methods = ["teacher 50 steps"] * 10 + ["teacher 4 steps"] * 10 + ["phased-dmd-4s4p"] * 10 + ["phased-dmd-4s2p"] * 10
    fig = viz.embedding_figure(rng.normal(size=(40, 2)), methods, rng.integers(0, 3, 40))
    handles = fig.axes[0].get_legend().legend_handles
    assert len({h.get_marker() for h in handles}) == 4
    assert len({h.get_color() for h in handles}) == 4


def test_class_embedding_figure_panels_and_scores(tmp_path):
    rng = np.random.default_rng(0)
    points = {"teacher": rng.normal(size=(40, 2)), "collapsed": 0.05 * rng.normal(size=(40, 2)),
              "faithful": rng.normal(size=(40, 2))}
    fig = viz.class_embedding_figure(points, reference="teacher", title="class 3")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2  # one panel per model besides the reference
    texts = {ax.get_title(): ax.texts[0].get_text() for ax in fig.axes}
    spread = {t.split(" vs ")[0]: float(s.splitlines()[0].split()[1]) for t, s in texts.items()}
    assert spread["collapsed"] < 0.2 < 0.7 < spread["faithful"]
    assert all("coverage" in s for s in texts.values())
    for ax in fig.axes:  # the reference and the model, each with its own marker
        markers = {c.get_paths()[0].vertices.tobytes() for c in ax.collections if isinstance(c, PathCollection)}
        assert len(markers) == 2
    fig = viz.class_embedding_figure(points, reference="teacher", scores={"collapsed": {"Vendi": 1.5}})
    assert "Vendi 1.50" in [ax.texts[0].get_text() for ax in fig.axes if ax.get_title().startswith("collapsed")]
    fig.savefig(tmp_path / "class.png", dpi=40)
    with pytest.raises(ValueError, match="reference"):
        viz.class_embedding_figure(points, reference="missing")


@pytest.fixture(scope="module")
def trajectory_2d():
    torch.manual_seed(0)
    experts = [MLPDenoiser(MLPConfig(num_classes=4)) for _ in range(2)]
    student = PhasedStudent(experts, flow.phase_boundaries(4, 2), flow.step_times(4), shape=(2,))
    labels = torch.arange(12) % 4
    _, traj = student.sample(labels, seed=0, return_trajectory=True)
    return traj, [student.expert_index(float(t)) for t in student.step_times[:-1]], labels


@pytest.mark.filterwarnings("ignore:Animation was deleted")
def test_trajectory_animation_2d_interpolates_and_colours_by_expert(trajectory_2d):
    traj, experts, labels = trajectory_2d
    anim = viz.trajectory_animation(traj, experts, gmm=ring_mix(), labels=labels, frames_per_step=4,
                                    hold_start=2, hold_end=3)
    frames = list(anim.new_frame_seq())
    assert len(frames) == 2 + 4 * 4 + 3
    ax = anim._fig.axes[0]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)][-1]
    trails = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(trails) == 4
    anim._func(2 + 4 + 1)  # step 2, halfway
    mid = traj[1].numpy() + 0.5 * (traj[2].numpy() - traj[1].numpy())
    assert np.allclose(dots.get_offsets(), mid, atol=1e-6)
    assert len(trails[0].get_segments()) == 12 and len(trails[2].get_segments()) == 0
    assert "expert 1" in ax.get_title()
    anim._func(len(frames) - 1)  # the end: outputs coloured by class
    assert np.allclose(dots.get_offsets(), traj[-1].numpy(), atol=1e-6)
    assert len({tuple(c) for c in dots.get_facecolor()}) == 4
    assert "expert 2" in ax.get_title()
    del anim  # never rendered on purpose: collect it here, where its warning is expected
    gc.collect()


def test_trajectory_animation_images_and_gif(tmp_path):
    g = torch.Generator().manual_seed(0)
    traj = [torch.rand((3, 1, 8, 8), generator=g) * 2 - 1 for _ in range(3)]
    anim = viz.trajectory_animation(traj, [0, 1], labels=[0, 1, 2], frames_per_step=3, hold_start=1, hold_end=2)
    data = viz.animation_to_gif(anim, tmp_path / "traj.gif")
    assert data[:6] in (b"GIF87a", b"GIF89a") and (tmp_path / "traj.gif").read_bytes() == data
    img = Image.open(io.BytesIO(data))
    assert img.n_frames >= 6 and img.info.get("loop") == 0
    with pytest.raises(ValueError, match="one entry per step"):
        viz.trajectory_animation(traj, [0])
    with pytest.raises(ValueError, match="points"):
        viz.trajectory_animation([torch.zeros(3, 5)] * 2, [0])


def test_gif_without_idle_redraws_is_the_same_gif(trajectory_2d, monkeypatch):
    """``animation_to_gif`` skips matplotlib's idle redraw after each frame (the writer draws each frame itself):
    the bytes equal those of a save that keeps it, and the canvas gets its own ``draw_idle`` back."""
    from contextlib import nullcontext

    from pdmd_lab.viz import animation

    traj, experts, labels = trajectory_2d

    def gif():
        anim = viz.trajectory_animation(traj, experts, gmm=ring_mix(), labels=labels, frames_per_step=2,
                                        hold_start=1, hold_end=2)
        canvas = anim._fig.canvas
        calls = []
        canvas.draw = lambda *a, _draw=canvas.draw, **k: (calls.append(1), _draw(*a, **k))[1]
        data = viz.animation_to_gif(anim)
        assert "draw_idle" not in vars(canvas)  # the class's method again
        return data, len(calls)

    fast, fast_draws = gif()
    monkeypatch.setattr(animation, "_no_idle_draw", lambda canvas: nullcontext())
    slow, slow_draws = gif()
    assert fast == slow
    assert slow_draws - fast_draws == 1 + 2 * 4 + 2  # one idle redraw per frame saved


def test_gif_frames_drawn_once_are_the_same_gif(trajectory_2d, monkeypatch):
    """The GIF writer draws each frame once and reads the canvas (``savefig`` would lay a constrained-layout
    figure out in a dry draw first): the same bytes as matplotlib's own ``PillowWriter.grab_frame``, the end
    frames' class legend (a new layout) included."""
    from matplotlib.animation import Animation, PillowWriter

    traj, experts, labels = trajectory_2d

    def gif():
        anim = viz.trajectory_animation(traj, experts, gmm=ring_mix(), labels=labels, frames_per_step=2,
                                        hold_start=1, hold_end=2)
        return viz.animation_to_gif(anim)

    once = gif()
    save = Animation.save

    def with_savefig_frames(self, path, writer=None, **kw):
        type(writer).grab_frame = PillowWriter.grab_frame  # the writer class is made per call
        return save(self, path, writer=writer, **kw)

    monkeypatch.setattr(Animation, "save", with_savefig_frames)
    assert gif() == once

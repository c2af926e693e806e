"""Figures: each function returns a Figure with the expected panels and artists, and saves to PNG."""

import json

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Circle

from pdmd_lab import flow, viz
from pdmd_lab.data import ring_mix
from pdmd_lab.nets import MLPConfig, MLPDenoiser
from pdmd_lab.student import PhasedStudent


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _images(n: int, seed: int = 0, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 0


@pytest.fixture(scope="module")
def student_trajectory():
    torch.manual_seed(0)
    experts = [MLPDenoiser(MLPConfig(num_classes=4)) for _ in range(2)]
    student = PhasedStudent(experts, flow.phase_boundaries(4, 2), flow.step_times(4), shape=(2,))
    labels = torch.arange(8) % 4
    _, traj = student.sample(labels, seed=0, return_trajectory=True)
    experts_used = [student.expert_index(float(student.step_times[i])) for i in range(student.num_steps)]
    return traj, experts_used, labels, student


# SNR and phases --------------------------------------------------------------------------------

def test_snr_figure_marks_steps_and_phases(tmp_path):
    fig = viz.snr_figure(flow.step_times(4), flow.phase_boundaries(4, 2), shifts=(1.0, 3.0))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.get_lines()) >= 2 + 5  # one curve per shift, one dashed line per step time
        labels = [t.get_text() for t in ax.texts]
        assert labels == ["phase 1", "phase 2"]
        assert len(ax.patches) == 2  # one shaded span per phase
    _save(fig, tmp_path / "snr.png")


def test_snr_figure_bare_and_into_given_axes():
    assert len(viz.snr_figure().axes) == 2
    ax = Figure().subplots()
    fig = viz.snr_figure(flow.step_times(2), ax=ax)
    assert fig is ax.figure and len(fig.axes) == 1
    with pytest.raises(ValueError, match="shifts"):
        viz.snr_figure(shifts=(0.0,))


def test_phases_figure_rows_and_boundaries(tmp_path):
    fig = viz.phases_figure(4, (1, 2, 4))
    assert len(fig.axes) == 3
    for ax, k in zip(fig.axes, (1, 2, 4)):
        assert len(ax.patches) == k  # one span per phase
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        offsets = dots.get_offsets()
        assert len(offsets) == 5 and np.all(np.isfinite(offsets))
        assert offsets[:, 0].min() == -viz.LOGSNR_CLIP and offsets[:, 0].max() == viz.LOGSNR_CLIP
    _save(fig, tmp_path / "phases.png")
    with pytest.raises(ValueError, match="divide"):
        viz.phases_figure(4, (3,))


# Samples ---------------------------------------------------------------------------------------

def test_scatter_figure_one_panel_per_method_same_limits(tmp_path):
    gmm = ring_mix()
    x, y = gmm.sample(200, seed=0)
    samples = {"data": (x, y), "dmd": (0.3 * x, y), "phased-dmd": (x + 0.1, y)}
    fig = viz.scatter_figure(samples, gmm, title="ring-mix", max_cols=2)
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == list(samples)
    assert len(fig.axes) == 4  # 2 x 2 grid, the fourth cell hidden
    assert len({ax.get_xlim() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    for ax in axes:
        assert sum(isinstance(p, Circle) for p in ax.patches) == gmm.num_modes
        assert len(ax.collections) == 2  # points and mode centres
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 4  # four classes
    _save(fig, tmp_path / "scatter.png")


def test_scatter_figure_rejects_non_2d():
    with pytest.raises(ValueError, match="2D points"):
        viz.scatter_figure({"img": (_images(4), None)})


def test_samples_figure_points_and_images(tmp_path):
    x, y = ring_mix().sample(64, seed=0)
    fig = viz.samples_figure(x, y, dataset="ring-mix", title="oracle")
    assert len(fig.axes) == 1 and sum(isinstance(p, Circle) for p in fig.axes[0].patches) == 8
    _save(fig, tmp_path / "points.png")
    fig = viz.samples_figure(_images(10), torch.arange(10), dataset="digits")
    (img,) = fig.axes[0].images
    assert img.get_array().shape == (3 * 9 + 1, 4 * 9 + 1)  # 10 images, 4 a row, 1-pixel gutters
    _save(fig, tmp_path / "images.png")
    with pytest.raises(ValueError, match="points"):
        viz.samples_figure(torch.zeros(3, 5))


def test_image_grid_array_shapes_and_values():
    grid = viz.image_grid_array(_images(5), nrow=3)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1) and grid.dtype == np.uint8
    rgb = viz.image_grid_array(_images(4, shape=(3, 6, 6)), nrow=4, padding=0)
    assert rgb.shape == (6, 24, 3)
    ones = viz.image_grid_array(-torch.ones(1, 1, 2, 2), nrow=1, padding=0)
    assert ones.tolist() == [[0, 0], [0, 0]]  # -1 is black, 1 (pad) is white
    assert viz.image_grid_array(torch.ones(1, 1, 2, 2), nrow=1)[0, 0] == 255
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.image_grid_array(torch.zeros(2, 2, 4, 4), nrow=1)


def test_image_grid_figure_rows_and_captions(tmp_path):
    rows = {"teacher": _images(4, 0), "dmd": _images(4, 1), "phased-dmd": _images(4, 2)}
    fig = viz.image_grid_figure(rows, captions={"dmd": "NFE 1, 2 ms"}, title="same seeds",
                                column_labels=[f"seed {i}" for i in range(4)])
    assert len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == ["teacher", "dmd\nNFE 1, 2 ms", "phased-dmd"]
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [f"seed {i}" for i in range(4)]
    _save(fig, tmp_path / "grid.png")


# Trajectories ----------------------------------------------------------------------------------

def test_trajectory_figure_2d_segments_per_expert(student_trajectory, tmp_path):
    traj, experts_used, labels, student = student_trajectory
    assert experts_used == [0, 0, 1, 1]
    fig = viz.trajectory_figure(traj, experts_used, gmm=ring_mix(), labels=labels)
    (ax,) = fig.axes
    segments = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(segments) == 4 and all(len(c.get_segments()) == 8 for c in segments)
    colors = [tuple(c.get_colors()[0][:3]) for c in segments]
    assert colors[0] == colors[1] != colors[2] == colors[3]  # coloured by expert
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["expert 1: steps 1, 2", "expert 2: steps 3, 4"]
    _save(fig, tmp_path / "traj.png")


def test_trajectory_figure_images_grid(tmp_path):
    traj = [_images(3, seed=i) for i in range(5)]
    fig = viz.trajectory_figure(traj, [0, 1, 2, 3], labels=[1, 2, 3], max_samples=2)
    assert len(fig.axes) == 2 * 5 and all(isinstance(ax.images[0], AxesImage) for ax in fig.axes)
    assert fig.axes[0].get_title() == "t=1.00\nnoise"
    assert fig.axes[4].get_title() == "t=0.00\nexpert 4"
    _save(fig, tmp_path / "traj_img.png")
    with pytest.raises(ValueError, match="one entry per step"):
        viz.trajectory_figure(traj, [0, 1])


# Embeddings, curves, metrics -------------------------------------------------------------------

def test_embedding_figure_two_panels(tmp_path):
    rng = np.random.default_rng(0)
    methods = ["teacher"] * 20 + ["dmd"] * 20 + ["phased-dmd"] * 20
    fig = viz.embedding_figure(rng.normal(size=(60, 2)), methods, rng.integers(0, 3, 60), title="t-SNE")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["teacher", "dmd", "phased-dmd"]
    assert len(fig.axes[1].get_legend().get_texts()) == 3
    _save(fig, tmp_path / "embed.png")
    with pytest.raises(ValueError, match="one method per point"):
        viz.embedding_figure(np.zeros((3, 2)), ["a"], [0, 0, 0])


def test_training_curves_from_jsonl_with_phases(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [{"iter": i, "phase": 1 + (i - 1) // 100, "loss_fake": 1.0 / i, "loss_generator": 0.5,
              "time_s": i} for i in range(10, 201, 10)]
    lines.append({"iter": 200, "phase": 2, "loss_fake": 0.0, "loss_generator": 0.4, "time_s": 1})  # resumed
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    fig = viz.training_curves_figure(tmp_path)  # a run folder holding log.jsonl
    assert [ax.get_title() for ax in fig.axes] == ["loss_fake", "loss_generator"]
    ax = fig.axes[0]
    curve, phase_line = ax.get_lines()
    assert len(curve.get_xdata()) == 20 and curve.get_ydata()[-1] == 0.0  # last record per iter wins
    assert phase_line.get_xdata()[0] == 100
    assert [t.get_text() for t in ax.texts] == ["phase 1", "phase 2"]
    _save(fig, tmp_path / "curves.png")
    fig = viz.training_curves_figure([{"iter": 1, "loss": 2.0}, {"iter": 2, "loss": 1.0}])
    assert len(fig.axes) == 1 and not fig.axes[0].texts
    with pytest.raises(ValueError, match="no run log"):
        viz.training_curves_figure(tmp_path / "missing.jsonl")


def test_metrics_bar_figure_panels_and_missing_values(tmp_path):
    table = {"teacher": {"coverage": 1.0, "energy": 0.01}, "dmd": {"coverage": 0.5},
             "phased-dmd": {"coverage": 1.0, "energy": float("nan")}}
    fig = viz.metrics_bar_figure(table, ["coverage", "energy"])
    cov, energy = fig.axes
    assert len(cov.patches) == 3 and len(energy.patches) == 1
    assert [t.get_text() for t in energy.texts].count("n/a") == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(table)
    bar_colors = [p.get_facecolor() for p in cov.patches]
    assert len(set(bar_colors)) == 3
    _save(fig, tmp_path / "bars.png")


def test_method_colors_are_fixed_by_prefix():
    c = viz.method_colors(["phased-dmd 4/4", "dmd2-sgts", "dmd", "mine", "other"])
    assert c["phased-dmd 4/4"] == viz.METHOD_COLORS["phased-dmd"]
    assert c["dmd2-sgts"] != c["dmd"]
    assert c["mine"] != c["other"]

"""``viz.denoiser_predictions`` / ``denoiser_figure`` / ``denoiser_animation``: the teacher's x0 prediction along t.

The exact oracle's prediction at ``t -> 1`` is the data mean (``x_1`` carries no information about ``x0``)
and at small ``t`` it sits on the modes; the figures colour each ``t`` by the phase whose subinterval holds it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdmd_lab import flow, viz
from pdmd_lab.data import get_dataset

GMM = get_dataset("ring-mix").gmm


def test_predictions_go_from_the_mean_to_the_modes():
    states = viz.denoiser_predictions(GMM, [0.999, 0.5, 0.02], n=400, seed=0)
    mean = (GMM.mode_weights(None)[0] @ GMM.means).float()
    spread_high = float((states[0]["x0_hat"] - mean).norm(dim=1).max())
    assert spread_high < 0.05  # at t = 1 every prediction is E[x0]
    assert states[0]["near_mode"] == 0.0
    assert states[2]["near_mode"] > 0.95
    assert 0.0 < states[1]["near_mode"] < states[2]["near_mode"]
    # x_t is the noise path of one draw: at t ~ 0 the prediction is x_t itself, to first order
    assert torch.allclose(states[2]["x0_hat"], states[2]["x_t"] / 0.98, atol=0.15)


def test_predictions_use_the_given_labels_and_velocity():
    one_class = viz.denoiser_predictions(GMM, [0.999], labels=2, n=50, seed=1)[0]
    mean2 = (GMM.mode_weights(torch.tensor([2]))[0] @ GMM.means).float()
    assert float((one_class["x0_hat"] - mean2).norm(dim=1).max()) < 0.05
    zero = viz.denoiser_predictions(GMM, [0.5], n=20, velocity=lambda x, t, y: torch.zeros_like(x))[0]
    assert torch.allclose(zero["x0_hat"], zero["x_t"])  # x0_hat = x_t - t * 0


def test_phase_of_follows_the_subintervals():
    b = flow.phase_boundaries(4, 4)  # 1, 0.75, 0.5, 0.25, 0
    assert [viz._phase_of(t, b) for t in (1.0, 0.9, 0.75, 0.6, 0.5, 0.26, 0.25, 0.1)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_denoiser_figure_has_one_panel_per_t_framed_by_phase():
    b = flow.phase_boundaries(4, 2)
    fig = viz.denoiser_figure(GMM, ts=(0.9, 0.3), boundaries=b, n=60)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    colors = viz.expert_colors(2)
    for ax, k in zip(axes, (0, 1)):
        assert f"phase {k + 1}" in ax.get_title()
        assert np.allclose(ax.spines["top"].get_edgecolor(), colors[k])


def test_denoiser_animation_frames_and_bad_values():
    anim = viz.denoiser_animation(GMM, boundaries=flow.phase_boundaries(4, 4), n=30, frames=5, hold_end=2)
    assert len(list(anim.new_frame_seq())) == 7
    gif = viz.animation_to_gif(anim, dpi=30)
    assert gif[:6] in (b"GIF87a", b"GIF89a")
    with pytest.raises(ValueError, match="frames"):
        viz.denoiser_animation(GMM, frames=1)

"""Optical flow (Farneback) of clips: known shifts, still clips, dynamic degree, trajectories rendered to frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdmd_lab import opticalflow as of


@pytest.mark.parametrize("k,direction", [(1.0, (1, 0)), (3.0, (0, 1)), (2.0, (3, 4))])
def test_shifted_texture_gives_k(k, direction):
    """A textured frame shifted k pixels per frame: the interior mean flow is k within 10%."""
    clip = of.shifted_clip(k, frames=5, size=64, direction=direction)
    per_pair = of.frame_flows(clip)
    assert per_pair.shape == (4,)
    assert abs(of.mean_flow(clip) - k) < 0.1 * k
    assert np.all(np.abs(per_pair - k) < 0.1 * k)


def test_still_clip_is_zero_and_layouts_agree():
    still = np.repeat(of.texture(48)[None].astype(np.uint8), 4, axis=0)
    assert of.mean_flow(still) < 1e-3
    clip = of.shifted_clip(2.0, frames=3, size=48)
    rgb = torch.from_numpy(np.repeat(clip[:, None], 3, axis=1)).float() / 255  # (F, 3, H, W) in [0, 1]
    assert abs(of.mean_flow(rgb) - of.mean_flow(clip)) < 1e-6
    video = rgb.transpose(0, 1)  # the VAE's (3, F, H, W)
    assert torch.equal(of.clip_frames(video), rgb)


def test_dynamic_degree_and_threshold():
    assert of.default_threshold(256, 480) == 6.0
    assert of.default_threshold(64, 64) == 1.5
    assert of.dynamic_degree([0.0, 1.0, 2.0, 3.0], threshold=1.5) == 0.5
    assert of.dynamic_degree([0.0, 1.5], threshold=1.5) == 0.0  # strictly above


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 frames"):
        of.mean_flow(np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        of.mean_flow(np.zeros((3, 2, 8, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        of.mean_flow(np.full((2, 8, 8), np.nan))
    with pytest.raises(ValueError, match="border"):
        of.frame_flows(of.shifted_clip(1.0, frames=2, size=16), border=0.5)
    with pytest.raises(ValueError, match="at least one clip"):
        of.dynamic_degree([], 1.0)
    with pytest.raises(ValueError, match="threshold"):
        of.dynamic_degree([1.0], float("nan"))


def test_trajectories_rendered_to_frames_match_their_exact_displacement():
    """Point trajectories (T, 2) panned over a texture: Farneback against the exact |p_{f+1} - p_f|."""
    t = torch.arange(6, dtype=torch.float64)[:, None]
    trajs = torch.stack([torch.zeros(6, 2),                                  # still
                         torch.cat([0.25 * t, 0 * t], 1),                    # slow, +x
                         torch.cat([0.3 * t, -0.4 * t], 1),                  # fast, diagonal: 0.5 per frame
                         torch.cat([torch.cos(t), torch.sin(t)], 1) * 0.5])  # circle: chord 2 * 0.5 * sin(1/2)
    assert of.exact_flow(trajs[2]) == pytest.approx(0.5)
    assert of.exact_flow(trajs[3]) == pytest.approx(np.sin(0.5), rel=1e-9)
    table = of.trajectory_flow_table(trajs, pixels_per_unit=4.0)
    assert table["exact"] == pytest.approx([0.0, 1.0, 2.0, 4 * np.sin(0.5)])
    assert table["estimate"][0] < 1e-3
    for exact, est in zip(table["exact"][1:], table["estimate"][1:]):
        assert abs(est - exact) < 0.1 * exact
    assert table["rel_error"] < 0.1
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        of.render_frames(torch.zeros(5, 3))


def test_a_dot_on_black_flows_over_the_object_only():
    """A bright dot moving 2 px per frame: over the dot the estimate is 2; the interior mean is diluted."""
    def dot(t):
        yy, xx = np.mgrid[0:48, 0:48] + 0.5
        return np.stack([(255 * np.clip(3.0 - np.hypot(xx - 16 - x, yy - 24 - y), 0, 1)).astype(np.uint8)
                         for x, y in 4.0 * np.asarray(t)])
    traj = torch.stack([torch.arange(6.0) * 0.5, torch.zeros(6)], 1)  # 0.5 units per frame at 4 px per unit
    table = of.trajectory_flow_table(traj[None], render=dot, pixels_per_unit=4.0)
    assert table["exact"] == pytest.approx([2.0])
    assert abs(table["object"][0] - 2.0) < 0.2
    assert table["estimate"][0] < 0.5 * table["object"][0]

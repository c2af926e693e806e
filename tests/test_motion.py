"""motion-mix: the exact trajectory mixture, its motion metrics, the dot clips and the family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdmd_lab import motion


@pytest.fixture(scope="module")
def mix():
    return motion.motion_mix()


def test_oracle_velocity_matches_monte_carlo(mix):
    """E[eps - x0 | x_t, class] against a self-normalised importance-sampling estimate from 200,000 draws;
    the same mixture with isotropic modes (same means, jitter std) is far off, so the check can fail."""
    from pdmd_lab.data import GaussianMixture

    n = 200_000
    labels = torch.zeros(n, dtype=torch.long)
    x0 = mix.sample(n, 1, labels=labels)[0].double()
    iso = GaussianMixture(mix.means, torch.tensor(motion.JITTER_STD), mix.weights)
    g = torch.Generator().manual_seed(3)
    for t in (0.6, 0.8, 0.95):
        xq = (1 - t) * x0[:4] + t * torch.randn(4, mix.dim, generator=g, dtype=torch.float64)
        v, v_iso = mix.velocity(xq, t, labels[:4]).double(), iso.velocity(xq, t, labels[:4]).double()
        for i in range(4):
            w = torch.softmax(-0.5 * ((xq[i] - (1 - t) * x0) ** 2).sum(1) / t**2, 0)  # p(x_t | x0) weights
            v_mc = (xq[i] - (w[:, None] * x0).sum(0)) / t  # E[v | x_t] = (x_t - E[x0 | x_t]) / t
            assert (v[i] - v_mc).norm() < 0.01 * v_mc.norm(), (t, i)
            assert (v_iso[i] - v_mc).norm() > 0.03 * v_mc.norm(), (t, i)


def test_isotropic_case_is_the_gaussian_mixture_oracle(mix):
    from pdmd_lab.data import GaussianMixture

    cov = 0.3**2 * torch.eye(mix.dim, dtype=torch.float64).expand(mix.num_modes, -1, -1)
    iso = motion.TrajectoryMixture(mix.means, cov, mix.weights)
    gmm = GaussianMixture(mix.means, torch.tensor(0.3), mix.weights)
    g = torch.Generator().manual_seed(0)
    x, t = 3 * torch.randn(64, mix.dim, generator=g, dtype=torch.float64), torch.rand(64, generator=g)
    labels = torch.arange(64) % 5  # label 4 is the unconditional mixture
    assert torch.allclose(iso.velocity(x, t, labels), gmm.velocity(x, t, labels), atol=1e-6)
    assert torch.allclose(iso.log_prob(x.float(), labels, 0.3), gmm.log_prob(x.float(), labels, 0.3), atol=1e-4)


def test_the_mixture_is_the_stated_design(mix):
    x, labels, modes = mix.sample(4000, 0, return_modes=True)
    names = mix.mode_names
    assert mix.num_modes == 9 and mix.num_classes == 4 and names[0] == "still"
    flow = motion.per_sample_flow(x)
    for kind, speed in (("still", 0.0), ("slow", motion.SLOW), ("fast", motion.FAST)):
        sel = torch.tensor([names[int(k)].startswith(kind) for k in modes])
        assert abs(float(flow[sel].mean()) - speed) < 0.15, kind  # jitter adds a little to every flow
    assert (mix.assign_modes(x) == modes).double().mean() > 0.97
    # Every class holds the still mode: it is shared, so CFG thins it.
    assert (mix.weights[:, 0] > 0).all()
    share = mix.weights[:, 0].mean()
    assert abs(float((modes == 0).double().mean()) - float(share)) < 0.03


def test_mean_flow_and_dynamic_degree_known_answers():
    f = torch.arange(motion.FRAMES, dtype=torch.float64)
    moving = torch.stack([0.4 * f, 0.3 * f], -1)  # 0.5 per frame
    still = torch.zeros(motion.FRAMES, 2, dtype=torch.float64)
    x = torch.stack([moving, still, still, still]).reshape(4, -1)
    assert motion.mean_flow(x) == pytest.approx(0.125)
    assert motion.per_sample_flow(x).tolist() == pytest.approx([0.5, 0, 0, 0])
    assert motion.dynamic_degree(x) == pytest.approx(0.25)
    assert motion.dynamic_degree(x, threshold=0.6) == 0.0
    with pytest.raises(ValueError, match="trajectories"):
        motion.as_frames(torch.zeros(3, 5))


def test_mode_scores_see_lost_still_samples(mix):
    x, labels, modes = mix.sample(2000, 0, return_modes=True)
    ref = mix.sample(2000, 1, labels=labels)[0]
    same = motion.score(mix, x, labels, ref)
    assert same["motion_modes_missed"] == 0 and same["mode_kl"] < 0.02 and abs(same["flow_ratio"] - 1) < 0.05
    moved_x = x.clone()  # every still sample replaced by a moving one of its class
    for c in range(mix.num_classes):
        still = torch.nonzero((modes == 0) & (labels == c))[:, 0]
        moving = torch.nonzero((modes != 0) & (labels == c))[:, 0]
        moved_x[still] = x[moving[: len(still)]]
    moved = motion.score(mix, moved_x, labels, ref)
    assert moved["still_share"] < 0.01 < same["still_share"] - 0.1  # a few slow samples look still
    assert moved["motion_modes_missed"] == mix.num_classes  # the still cell of each class
    assert moved["dynamic_degree"] > same["dynamic_degree"] + 0.2 and moved["flow_ratio"] > 1.2
    assert moved["mode_kl"] > 0.2


def test_motion_type_is_committed_at_high_noise(mix):
    ts = np.array([0.99, 0.7, 0.3, 0.05])
    post = motion.motion_type_posterior(mix, ts, n=600)
    for kind, p in post.items():
        assert p[-1] > 0.95, kind  # decided at low noise
        assert np.all(np.diff(p) > -0.02), kind  # and more so as t falls
    times = motion.commitment_times(mix, level=0.5, n=600)
    assert all(t >= 0.75 for t in times.values()), times  # half the posterior mass already at t >= 0.75
    assert times["fast"] >= times["still"]


def test_render_frames_moves_the_dot_by_the_displacement():
    size, extent = 64, 10.0
    f = torch.arange(motion.FRAMES, dtype=torch.float64)
    traj = torch.stack([-5 + 1.2 * f, 2 - 0.5 * f], -1)
    frames = motion.render_frames(traj, size=size, extent=extent)
    assert frames.shape == (motion.FRAMES, size, size) and frames.dtype == np.uint8
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    w = frames.astype(np.float64)
    cx, cy = (w * xx).sum((1, 2)) / w.sum((1, 2)), (w * yy).sum((1, 2)) / w.sum((1, 2))
    scale = size / (2 * extent)
    assert np.allclose(np.diff(cx), 1.2 * scale, atol=0.1)  # pixels; the disc's rim is anti-aliased
    assert np.allclose(np.diff(cy), 0.5 * scale, atol=0.1)  # image y points down
    assert abs((cx[-1] - cx[0]) / 7 - 1.2 * scale) < 0.02 and abs((cy[-1] - cy[0]) / 7 - 0.5 * scale) < 0.02
    assert motion.render_frames(torch.zeros(motion.FRAMES, 2), size=16).std(0).max() == 0  # still: same frames
    with pytest.raises(ValueError, match="size"):
        motion.render_frames(traj, size=2)


def test_gif_and_clips_figure(tmp_path, mix):
    x = mix.sample(3, 0)[0]
    motion.save_gif(x, tmp_path / "clips.gif", size=24)
    motion.save_gif([list(x), list(x[:2]) + [x[2]]], tmp_path / "rows.gif", size=24)
    from PIL import Image

    im = Image.open(tmp_path / "clips.gif")
    assert im.n_frames == motion.FRAMES and im.size == (3 * 25, 24)  # each clip with a one-pixel separator
    assert Image.open(tmp_path / "rows.gif").size == (3 * 25, 2 * 24 + 1)
    fig = motion.clips_figure({"data": x}, n=3)
    assert len(fig.axes) == 3


def test_family_registered_and_scored_by_the_study(tmp_path):
    from pdmd_lab import cli
    from pdmd_lab.families import get_family

    fam = get_family("motion-mix")
    assert fam.name == "trajectories" and fam.class_names("motion-mix") == list(motion.DIRECTIONS)
    assert fam.teacher_cfg("motion-mix") == 1.5 and fam.has_oracle("motion-mix")
    out = tmp_path / "study"
    try:
        rc = cli.main(["study", "--rows", "motion-mix/teacher@2,motion-mix/teacher@50", "--seeds", "0", "--n", "300",
                       "--out", str(out)])
    except SystemExit as e:
        rc = e.code
    assert rc in (0, None)
    import json

    s = json.loads((out / "summary.json").read_text())["motion-mix"]
    t50, t2 = s["motion-mix/teacher@50"], s["motion-mix/teacher@2"]
    assert abs(t50["flow_ratio"][0] - 1) < 0.1 and t50["motion_modes_missed"][0] == 0
    assert t2["energy_distance"][0] > t50["energy_distance"][0]
    assert "mean_flow" in (out / "summary.md").read_text()
    assert not math.isnan(t2["mean_flow"][0])


def test_fitted_speed_and_jitter_known_answers():
    f = torch.arange(motion.FRAMES, dtype=torch.float64)
    line = torch.stack([1 + 0.3 * f, -2 + 0.4 * f], -1)  # speed 0.5
    zigzag = torch.stack([0.1 * (-1) ** f, torch.zeros_like(f)], -1)  # no motion, jitter: residual RMS
    speed, jitter = motion.fitted_motion(torch.stack([line, line + zigzag]))
    assert speed[0] == pytest.approx(0.5) and jitter[0] == pytest.approx(0.0, abs=1e-12)
    res = zigzag[:, 0] - (zigzag[:, 0].mean() + (f - f.mean()) * ((f - f.mean()) * zigzag[:, 0]).sum()
                          / ((f - f.mean()) ** 2).sum())
    assert jitter[1] == pytest.approx(float(res.pow(2).sum().div(2 * motion.FRAMES).sqrt()))


def test_type_mass_along_the_teachers_trajectory(mix):
    from pdmd_lab.families import get_family

    teacher = get_family("motion-mix").teacher_sampler("oracle:motion-mix", steps=8, cfg=1.0)
    labels = torch.arange(400) % 4
    r = motion.type_mass_along_sampling(mix, teacher, labels)
    assert len(r["t"]) == 9 and r["t"][0] == 1.0
    assert r["still"][0] == pytest.approx(motion.CLASS_WEIGHTS["still"], abs=1e-3)  # pure noise: the prior
    assert all(abs(a + b + c - 1) < 1e-9 for a, b, c in zip(r["still"], r["slow"], r["fast"]))
    x = teacher.sample(labels, seed=0)  # the end state is the samples the mode counts see
    assert abs(r["still"][-1] - motion.score(mix, x, labels, x)["still_share"]) < 0.05

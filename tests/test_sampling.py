"""Samplers: Euler equals diffusers' FlowMatchEulerDiscreteScheduler; CFG form; callbacks."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pdmd_lab import flow
from pdmd_lab.data import GaussianMixture
from pdmd_lab.nets import MLPConfig, MLPDenoiser
from pdmd_lab.sampling import guided_velocity, nfe, sample_euler, trajectory
from pdmd_lab.teacher import OracleTeacher

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(data_dim=2, num_classes=NUM_CLASSES, hidden=64, depth=2, emb_dim=32))
    # Scale the last layer up so the untrained net moves points by O(1) and CFG matters.
    with torch.no_grad():
        net.out[1].weight.mul_(5.0)
        net.out[1].bias.normal_()
    return net.eval()


class Counting(torch.nn.Module):
    """Wraps a model and counts its calls (and the batch sizes it saw)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    @property
    def num_classes(self):
        return self.model.num_classes

    def forward(self, x, t, class_labels=None):
        self.calls.append(x.shape[0])
        return self.model(x, t, class_labels)


def _diffusers_euler(model, z, num_steps, *, shift=1.0, labels=None, cfg=1.0):
    """The reference loop: diffusers' scheduler, timesteps in [0, 1000] converted to t = timestep / 1000.

    Custom ``sigmas`` (N values; the scheduler appends 0) go through the scheduler's own shift, so the
    unshifted grid 1, (N-1)/N, ..., 1/N with ``shift`` should reproduce ``step_times(N, shift)``. (The
    scheduler's default ``set_timesteps(N)`` ends at sigma = 1/1000, not 0, so it is not used here.)
    """
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(sigmas=torch.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist())
    x = z.clone()
    null = None if labels is None else torch.full_like(labels, model.num_classes)
    for timestep in sched.timesteps:
        t = timestep / 1000
        with torch.no_grad():
            if cfg == 1.0 or labels is None:
                v = model(x, t, labels)
            else:
                v_c, v_u = model(x, t, labels), model(x, t, null)
                v = v_u + cfg * (v_c - v_u)
        x = sched.step(v, timestep, x).prev_sample
    return x, sched


@pytest.mark.parametrize("num_steps,shift", [(4, 1.0), (25, 1.0), (8, 3.0)])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_sample_euler_equals_diffusers_scheduler(model, num_steps, shift, cfg):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(128, 2, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (128,), generator=g)
    ref, sched = _diffusers_euler(model, z, num_steps, shift=shift, labels=labels, cfg=cfg)
    ts = flow.step_times(num_steps, shift)
    torch.testing.assert_close(sched.sigmas.double(), ts, atol=1e-6, rtol=0)
    ours = sample_euler(model, z, ts, class_labels=labels, cfg=cfg)
    assert (ours - z).abs().max() > 0.5  # the comparison is not vacuous
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_sample_euler_unconditional_equals_diffusers(model):
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    ref, _ = _diffusers_euler(model, z, 10)
    torch.testing.assert_close(sample_euler(model, z, flow.step_times(10)), ref, atol=1e-5, rtol=1e-5)


def test_guided_velocity_form(model):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(32, 2, generator=g), 0.37
    labels = torch.randint(0, NUM_CLASSES, (32,), generator=g)
    v_c = model(x, t, labels)
    v_u = model(x, t, torch.full((32,), NUM_CLASSES))
    for w in (0.0, 0.5, 2.0, 7.5):
        torch.testing.assert_close(guided_velocity(model, x, t, labels, w), v_u + w * (v_c - v_u),
                                   atol=1e-5, rtol=1e-5)
    # A scalar label and a per-sample time broadcast.
    torch.testing.assert_close(guided_velocity(model, x, torch.full((32,), t), 2, 2.0),
                               guided_velocity(model, x, t, torch.full((32,), 2), 2.0))


def test_guided_velocity_calls(model):
    counting = Counting(model)
    x = torch.randn(16, 2)
    labels = torch.zeros(16, dtype=torch.long)
    guided_velocity(counting, x, 0.5, labels, 1.0)
    guided_velocity(counting, x, 0.5, None, 4.0)  # no labels: unconditional, guidance is moot
    guided_velocity(counting, x, 0.5, labels, 4.0)  # one batched call of conditional + unconditional
    assert counting.calls == [16, 16, 32]
    v_uncond = model(x, 0.5, torch.full((16,), NUM_CLASSES))
    torch.testing.assert_close(guided_velocity(model, x, 0.5, None, 4.0), v_uncond)
    assert nfe(4, 1.0) == 4 and nfe(4, 3.0) == 8


def test_negative_cfg_raises(model):
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="cfg"):
        guided_velocity(model, x, 0.5, torch.zeros(4, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match="cfg"):
        sample_euler(model, x, flow.step_times(2), class_labels=torch.zeros(4, dtype=torch.long), cfg=-0.5)


def test_callback_dict(model):
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    ts = flow.step_times(5, 2.0)
    seen = []
    labels = torch.arange(8) % NUM_CLASSES
    out = sample_euler(model, z, ts, class_labels=labels, cfg=2.0, callback=seen.append)
    assert len(seen) == 5
    for i, d in enumerate(seen):
        assert set(d) == {"x", "x_next", "i", "t", "t_next", "v", "x0_hat"}
        assert d["i"] == i
        assert d["t"] == pytest.approx(ts[i].item()) and d["t_next"] == pytest.approx(ts[i + 1].item())
        torch.testing.assert_close(d["x0_hat"], d["x"] - d["t"] * d["v"])
        nxt = seen[i + 1]["x"] if i + 1 < len(seen) else out
        torch.testing.assert_close(nxt, d["x"] + (d["t_next"] - d["t"]) * d["v"])
    torch.testing.assert_close(seen[0]["x"], z)


def test_trajectory(model):
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    ts = flow.step_times(6)
    labels = torch.zeros(8, dtype=torch.long)
    states = trajectory(model, z, ts, class_labels=labels)
    assert len(states) == 7 and torch.equal(states[0], z)
    torch.testing.assert_close(states[-1], sample_euler(model, z, ts, class_labels=labels))


class Linear(torch.nn.Module):
    """dx/dt = x: Euler from 1 to 0 in N equal steps multiplies x by (1 - 1/N)^N."""

    num_classes = 1

    def forward(self, x, t, class_labels=None):
        return x


@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4, 4)])
def test_sample_euler_closed_form_any_shape(shape):
    z = torch.randn(shape, dtype=torch.float64)
    for n in (1, 3, 10):
        out = sample_euler(Linear(), z, flow.step_times(n))
        torch.testing.assert_close(out, z * (1 - 1 / n) ** n)
    assert torch.equal(z, z.clone())  # input untouched


def test_oracle_euler_converges_to_exact_flow():
    """For one Gaussian N(mu, s^2 I) the exact ODE map from noise z is
    x_t = (1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) z."""
    mu, s = torch.tensor([[1.5, -0.5]]), 0.3
    oracle = OracleTeacher(GaussianMixture(mu, torch.tensor(s), torch.ones(1, 1)))
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = mu.double() + s * z
    errs = [(sample_euler(oracle, z, flow.step_times(n)) - exact).abs().max().item() for n in (10, 100)]
    assert errs[1] < 0.03 and errs[1] < errs[0] / 5, errs  # first order: measured 0.17 -> 0.019
    mid = sample_euler(oracle, z, flow.step_times(100)[:51])  # stop at t = 0.5
    torch.testing.assert_close(mid, 0.5 * mu.double() + (0.25 * s**2 + 0.25) ** 0.5 * z, atol=0.02, rtol=0)

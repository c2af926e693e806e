"""Every formula of docs/conventions.md §1-2 against a closed form or a Monte Carlo estimate."""

from __future__ import annotations

import math

import pytest
import torch

from pdmd_lab import flow

# Conversions (docs/conventions.md §1) --------------------------------------------------------------------


def _randn(*shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(64, 2), (8, 3, 5, 5)])
def test_conversions_round_trip(shape):
    g = torch.Generator().manual_seed(0)
    x0, eps = _randn(*shape, g=g), _randn(*shape, g=g)
    for t in (0.3, torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01):
        x_t = flow.add_noise(x0, eps, t)
        tt = flow.append_dims(t, x0)
        torch.testing.assert_close(x_t, (1 - tt) * x0 + tt * eps)
        v = eps - x0
        torch.testing.assert_close(flow.x0_from_velocity(x_t, v, t), x0)
        torch.testing.assert_close(flow.eps_from_velocity(x_t, v, t), eps)
        torch.testing.assert_close(flow.velocity_from_x0(x_t, x0, t), v)
        # Any velocity guess maps to an (x0, eps) pair that re-noises to x_t.
        v_guess = _randn(*shape, g=g)
        x0_hat, eps_hat = flow.x0_from_velocity(x_t, v_guess, t), flow.eps_from_velocity(x_t, v_guess, t)
        torch.testing.assert_close(flow.add_noise(x0_hat, eps_hat, t), x_t)
        torch.testing.assert_close(eps_hat - x0_hat, v_guess)


def test_append_dims():
    x = torch.zeros(4, 3, 2, 2)
    assert flow.append_dims(0.5, x).shape == ()
    assert flow.append_dims(torch.ones(4), x).shape == (4, 1, 1, 1)
    assert flow.append_dims(torch.ones(4), torch.zeros(4, 2)).shape == (4, 1)


# Time grids --------------------------------------------------------------------------------------


def test_shift_time_closed_form_identity_monotone():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(flow.shift_time(u, 1.0), u)
    for s in (0.5, 3.0, 5.0):
        shifted = flow.shift_time(u, s)
        torch.testing.assert_close(shifted, s * u / (1 + (s - 1) * u))
        assert shifted[0] == 0 and shifted[-1] == 1
        assert (shifted.diff() > 0).all()
        assert ((shifted >= u) if s > 1 else (shifted <= u)).all()  # shift > 1 spends more time near noise
    assert flow.shift_time(0.5, 3.0) == pytest.approx(0.75)
    # Shifts compose: shift(shift(u; a); b) = shift(u; a b).
    torch.testing.assert_close(flow.shift_time(flow.shift_time(u, 2.0), 1.5), flow.shift_time(u, 3.0))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="shift"):
            flow.shift_time(u, bad)


@pytest.mark.parametrize("n,shift", [(1, 1.0), (4, 1.0), (7, 3.0)])
def test_step_times(n, shift):
    ts = flow.step_times(n, shift)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert ts[0] == 1.0 and ts[-1] == 0.0
    assert (ts.diff() < 0).all()
    torch.testing.assert_close(ts, flow.shift_time(torch.linspace(1, 0, n + 1, dtype=torch.float64), shift))


@pytest.mark.parametrize("bad", [0, -2, 2.5, "4"])
def test_step_times_rejects(bad):
    with pytest.raises(ValueError, match="num_steps"):
        flow.step_times(bad)


def test_phase_boundaries_values():
    assert flow.phase_boundaries(4, 1).tolist() == [1.0, 0.0]
    assert flow.phase_boundaries(4, 2).tolist() == [1.0, 0.5, 0.0]
    assert flow.phase_boundaries(4, 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # With a shift the boundaries are a subset of the (shifted) step times.
    ts, bs = flow.step_times(4, 3.0), flow.phase_boundaries(4, 2, 3.0)
    assert bs.tolist() == [ts[0].item(), ts[2].item(), ts[4].item()]
    assert bs[1].item() == pytest.approx(0.75)


@pytest.mark.parametrize("phases,match",
                         [(3, "divide"), (0, "num_phases"), (5, "num_phases"), (2.0, "num_phases")])
def test_phase_boundaries_rejects(phases, match):
    with pytest.raises(ValueError, match=match):
        flow.phase_boundaries(4, phases)


def test_snr_logsnr_closed_forms():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(flow.snr(t), ((1 - t) / t) ** 2)
    torch.testing.assert_close(flow.logsnr(t), 2 * torch.log((1 - t) / t))
    torch.testing.assert_close(flow.logsnr(t), torch.log(flow.snr(t)))
    assert flow.snr(0.5) == 1.0 and flow.logsnr(0.5) == 0.0
    assert flow.logsnr(0.2) == pytest.approx(2 * math.log(4))
    assert (flow.logsnr(t).diff() < 0).all()  # SNR falls as t grows


def test_cfg_velocity():
    g = torch.Generator().manual_seed(1)
    vu, vc = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    torch.testing.assert_close(flow.cfg_velocity(vu, vc, 1.0), vc)
    torch.testing.assert_close(flow.cfg_velocity(vu, vc, 0.0), vu)
    torch.testing.assert_close(flow.cfg_velocity(vu, vc, 3.5), vu + 3.5 * (vc - vu))


def test_sample_t():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t(20000, 0.25, 0.75, generator=g)
    assert t.shape == (20000,) and t.min() >= 0.25 and t.max() <= 0.75
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    u = flow.sample_t(20000, 0.0, 1.0, shift=3.0, generator=torch.Generator().manual_seed(0))
    # P(shift(U; 3) <= 0.75) = P(U <= 0.5) = 0.5.
    assert (u <= 0.75).double().mean().item() == pytest.approx(0.5, abs=0.015)
    for lo, hi in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.1)):
        with pytest.raises(ValueError):
            flow.sample_t(4, lo, hi)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_sample_t_shifts_within_the_range_like_the_trainer(shift):
    """The shift acts inside the range: ``t = lo + (hi - lo) shift(u)`` never leaves ``(lo, hi]``
    (shifting after mapping gave t down to 0.60 for the range (0.75, 1) at shift 0.5), and
    :func:`flow.sample_t` and the trainer's ``Draw.t_between`` draw the same times from the same seed."""
    from pdmd_lab.distill import Draw

    lo, hi, n = 0.75, 1.0, 20000
    t = flow.sample_t(n, lo, hi, shift=shift, generator=torch.Generator().manual_seed(1))
    assert t.min() > lo and t.max() <= hi
    # Median: lo + (hi - lo) shift(0.5; s) = lo + (hi - lo) s / (1 + s).
    assert t.median().item() == pytest.approx(lo + (hi - lo) * shift / (1 + shift), abs=0.005)
    drawn = Draw(torch.Generator().manual_seed(1), n).t_between(lo, hi, shift)
    assert torch.equal(t, drawn)


# Forward transition (Phased DMD Eq. 2) -------------------------------------------------------------


def test_transition_coefficients_closed_form():
    for s, t in ((0.0, 0.4), (0.2, 0.5), (0.5, 0.9), (0.3, 0.3), (0.7, 1.0)):
        a, b = flow.transition_coefficients(s, t)
        assert a == pytest.approx((1 - t) / (1 - s))
        assert b**2 == pytest.approx(t**2 - a**2 * s**2, abs=1e-12)
        assert a**2 * s**2 + b**2 == pytest.approx(t**2)  # composite noise has variance t^2
    a, b = flow.transition_coefficients(0.0, 0.4)
    assert (a, b) == pytest.approx((0.6, 0.4))
    _, b = flow.transition_coefficients(0.3, 0.3)
    assert b == pytest.approx(0.0, abs=1e-7)
    # Tensor times broadcast.
    a, b = flow.transition_coefficients(0.2, torch.tensor([0.3, 0.6]))
    torch.testing.assert_close(b**2, torch.tensor([0.3, 0.6]) ** 2 - a**2 * 0.04)


def test_transition_at_zero_is_add_noise():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    t = torch.rand(32, generator=g)
    torch.testing.assert_close(flow.transition(x0, eps, 0.0, t), flow.add_noise(x0, eps, t))
    torch.testing.assert_close(flow.transition(x0, eps, 0.0, 0.6), flow.add_noise(x0, eps, 0.6))


def _moments(x):
    return x.mean(0), torch.cov(x.T)


@pytest.mark.parametrize("s,t", [(0.1, 0.3), (0.4, 0.6), (0.3, 0.9)])
def test_transition_gives_marginal(ring_mix, energy_distance, s, t):
    """Diffusing samples of p_s with the Eq. 2 kernel gives p_t (Markov property)."""
    gmm = ring_mix.gmm
    g = torch.Generator().manual_seed(7)

    def p_t_direct(n):
        x0, _ = ring_mix.sample(n, seed=g)
        return flow.add_noise(x0.double(), torch.randn(n, 2, generator=g, dtype=torch.float64), t)

    def p_t_via_s(n):
        x0, _ = ring_mix.sample(n, seed=g)
        x_s = flow.add_noise(x0.double(), torch.randn(n, 2, generator=g, dtype=torch.float64), s)
        return flow.transition(x_s, torch.randn(n, 2, generator=g, dtype=torch.float64), s, t)

    # Moments against the closed form: mean (1 - t) m, covariance (1 - t)^2 C0 + t^2 I.
    w = gmm.mode_weights(None)[0]
    m0 = w @ gmm.means
    c0 = (w[:, None, None] * (gmm.means[:, :, None] * gmm.means[:, None, :]
                              + gmm.stds[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64))).sum(0)
    c0 = c0 - m0[:, None] * m0[None]
    n = 200_000
    mean, cov = _moments(p_t_via_s(n))
    torch.testing.assert_close(mean, (1 - t) * m0, atol=0.02, rtol=0)
    cov_t = (1 - t) ** 2 * c0 + t**2 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(cov, cov_t, atol=0.03, rtol=0)

    # Energy distance to direct samples, against the data-vs-data baseline (averaged over 3 draws).
    n = 2000
    ed_via = sum(energy_distance(p_t_via_s(n), p_t_direct(n)) for _ in range(3)) / 3
    ed_base = sum(energy_distance(p_t_direct(n), p_t_direct(n)) for _ in range(3)) / 3
    assert ed_via < 2 * ed_base, (ed_via, ed_base)

    # Exact average log-density under p_t agrees (this has power: a kernel with b = t - a s fails it).
    n = 40_000
    lp_via = gmm.log_prob(p_t_via_s(n), t=t).double().mean()
    lp_direct = gmm.log_prob(p_t_direct(n), t=t).double().mean()
    assert abs(lp_via - lp_direct) < 0.04, (lp_via, lp_direct)


# Unbiased subinterval target (Phased DMD Eq. 11) -------------------------------------------------


def _binned_means(keys: list[torch.Tensor], r: torch.Tensor, bins: int):
    """Mean of ``r`` and its standard error in quantile bins of ``keys`` (a grid when several keys)."""
    idx = torch.zeros(len(r), dtype=torch.long)
    for k in keys:
        edges = torch.quantile(k[:100_000].float(), torch.linspace(0, 1, bins + 1)[1:-1]).double()
        idx = idx * bins + torch.bucketize(k, edges)
    m = bins ** len(keys)
    cnt = torch.bincount(idx, minlength=m).double()
    mean = torch.bincount(idx, weights=r, minlength=m) / cnt
    var = torch.bincount(idx, weights=r**2, minlength=m) / cnt - mean**2
    return mean, (var / cnt).sqrt(), cnt


def _draw_subinterval(gmm, n, s, t, g):
    """x0 ~ data, x_s = add_noise(x0, eps1, s), x_t = a x_s + b eps (Eq. 2); t a float or a (n,) tensor."""
    x0, _ = gmm.sample(n, seed=g)
    x0 = x0.double()
    x_s = flow.add_noise(x0, torch.randn(n, 1, generator=g, dtype=torch.float64), s)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x0, x_s, eps, flow.transition(x_s, eps, s, t)


@pytest.mark.parametrize("s,t", [(0.25, 0.5), (0.5, 0.7), (0.3, 0.9)])
def test_subinterval_target_is_unbiased(mixture_1d, s, t):
    """E[v* | x_t] equals the true velocity of p_t; the naive target eps - x_s does not (paper Fig. 2).

    x_t = (1 - t) x0 + (a s eps1 + b eps) and the composite noise has variance t^2, so the true
    velocity of the diffused distribution at x_t is the oracle velocity of the mixture at t. Binning
    compares per-bin means of v* - v_true(x_t), which are exactly zero in expectation for any bins.
    """
    g = torch.Generator().manual_seed(11)
    x0, x_s, eps, x_t = _draw_subinterval(mixture_1d, 400_000, s, t, g)
    v_true = mixture_1d.velocity(x_t, t)
    v_star = flow.subinterval_velocity_target(x_s, eps, s, t)
    naive = eps - x_s

    err, se, cnt = _binned_means([x_t[:, 0]], (v_star - v_true)[:, 0], bins=10)
    assert cnt.min() > 30_000
    assert err.abs().max() < 0.05, err  # measured 0.007 to 0.018
    assert (err / se).abs().max() < 5, err / se
    err_naive, se_naive, _ = _binned_means([x_t[:, 0]], (naive - v_true)[:, 0], bins=10)
    assert err_naive.abs().max() > 0.15, err_naive  # measured 0.20 to 0.34
    assert (err_naive / se_naive).abs().max() > 20


def test_subinterval_target_unbiased_for_t_in_subinterval(mixture_1d):
    """The same with t ~ U(s, 1) per sample, binned on (t, x_t); the residual is weighted by the
    clamped Eq. 13 loss weight, which depends on t only and so keeps the conditional mean at zero."""
    s = 0.4
    g = torch.Generator().manual_seed(12)
    n = 400_000
    t = flow.sample_t(n, s, 1.0, generator=g, dtype=torch.float64)
    x0, x_s, eps, x_t = _draw_subinterval(mixture_1d, n, s, t, g)
    w = flow.subinterval_loss_weight(s, t)
    v_true = mixture_1d.velocity(x_t, t)
    r = (w[:, None] * (flow.subinterval_velocity_target(x_s, eps, s, t) - v_true))[:, 0]
    err, se, _ = _binned_means([t, x_t[:, 0]], r, bins=5)
    assert err.abs().max() < 0.05 and (err / se).abs().max() < 5, (err, err / se)
    r_naive = (w[:, None] * (eps - x_s - v_true))[:, 0]
    err_naive, _, _ = _binned_means([t, x_t[:, 0]], r_naive, bins=5)
    assert err_naive.abs().max() > 0.2, err_naive


def test_subinterval_target_at_zero_is_flow_matching():
    g = torch.Generator().manual_seed(0)
    x0, eps = _randn(64, 2, g=g), _randn(64, 2, g=g)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    torch.testing.assert_close(flow.subinterval_velocity_target(x0, eps, 0.0, t), eps - x0)
    torch.testing.assert_close(flow.subinterval_velocity_target(x0, eps, 0.0, 0.5), eps - x0)


def test_subinterval_target_closed_form():
    g = torch.Generator().manual_seed(0)
    x_s, eps = _randn(8, 3, 4, 4, g=g), _randn(8, 3, 4, 4, g=g)
    s, t = 0.3, 0.65
    a = (1 - t) / (1 - s)
    b = math.sqrt(t**2 - a**2 * s**2)
    expected = ((t + (1 - t) * s**2 / (1 - s) ** 2) / b) * eps - x_s / (1 - s)
    torch.testing.assert_close(flow.subinterval_velocity_target(x_s, eps, s, t), expected)


def test_subinterval_loss_weight():
    s = 0.5
    for t in (0.5, 0.5 + 1e-6, 0.52, 0.6, 0.9):
        a = (1 - t) / (1 - s)
        b2 = t**2 - a**2 * s**2
        assert flow.subinterval_loss_weight(s, t) == pytest.approx(min(1.0, 10 * b2), abs=1e-12)
    assert flow.subinterval_loss_weight(s, s) == pytest.approx(0.0, abs=1e-12)
    assert flow.subinterval_loss_weight(s, s + 1e-6) < 1e-4  # t -> s: weight -> 0
    assert flow.subinterval_loss_weight(s, 0.9) == 1.0  # clamped
    tt = torch.tensor([0.5, 0.55, 0.95], dtype=torch.float64)
    w = flow.subinterval_loss_weight(s, tt)
    _, b = flow.transition_coefficients(s, tt)
    torch.testing.assert_close(w, torch.clamp(10 * b**2, max=1.0))
    # The weighted loss stays bounded as t -> s although v* ~ 1 / b blows up: w / b^2 <= 10.
    assert (w[1:] / b[1:] ** 2).max() <= 10 + 1e-9


# Tweedie through the transition and DMD weight -----------------------------------------------------


def test_xs_from_velocity_at_zero_is_x0():
    g = torch.Generator().manual_seed(0)
    x_t, v = _randn(16, 2, g=g), _randn(16, 2, g=g)
    for t in (0.3, torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05):
        torch.testing.assert_close(flow.xs_from_velocity(x_t, v, 0.0, t), flow.x0_from_velocity(x_t, v, t))
    # The divided form: (x_t - b^2 (x_t + (1 - t) v) / t) / a.
    s, t = 0.3, 0.7
    a, b = flow.transition_coefficients(s, t)
    expected = (x_t - b**2 * (x_t + (1 - t) * v) / t) / a
    torch.testing.assert_close(flow.xs_from_velocity(x_t, v, s, t), expected)
    # At t = s the estimate is x_t itself.
    torch.testing.assert_close(flow.xs_from_velocity(x_t, v, 0.4, 0.4), x_t)


@pytest.mark.parametrize("s,t", [(0.2, 0.5), (0.5, 0.8)])
def test_xs_from_velocity_is_posterior_mean(mixture_1d, s, t):
    """With the exact velocity, xs_hat(x_t) = E[x_s | x_t] (Monte Carlo, binned on x_t)."""
    g = torch.Generator().manual_seed(3)
    _, x_s, _, x_t = _draw_subinterval(mixture_1d, 400_000, s, t, g)
    xs_hat = flow.xs_from_velocity(x_t, mixture_1d.velocity(x_t, t), s, t)
    err, se, _ = _binned_means([x_t[:, 0]], (x_s - xs_hat)[:, 0], bins=10)
    assert err.abs().max() < 0.02 and (err / se).abs().max() < 5, (err, err / se)  # measured < 0.011
    # The plain x0 estimate is not E[x_s | x_t].
    x0_hat = flow.x0_from_velocity(x_t, mixture_1d.velocity(x_t, t), t)
    err0, _, _ = _binned_means([x_t[:, 0]], (x_s - x0_hat)[:, 0], bins=10)
    assert err0.abs().max() > 0.05


def _xs_float64(x_t, v, s, t):
    """Reference x_s estimate in float64: the divided form for t < 1, its limit (1 - s)(x_t - v) at t = 1."""
    a, b = (1 - t) / (1 - s), torch.sqrt(t**2 - ((1 - t) / (1 - s)) ** 2 * s**2)
    eps_hat = x_t + ((1 - t) * v.T).T
    design = ((x_t.T - (b**2 / t) * eps_hat.T) / torch.where(t < 1, a, 1.0)).T
    out = torch.where((t < 1)[:, None], design, (1 - s) * (x_t - v))
    return torch.where((t == s)[:, None], x_t, out)  # at t = s the estimate is x_t itself


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.75])
def test_xs_from_velocity_float32_is_float64_accurate_up_to_t_1(s):
    """For every float32 t in [s, 1], t = 1 included, the float32 estimate is finite and within 1e-4 of
    float64 relative to |x_s|. The divided form divides by a = (1 - t) / (1 - s): it loses every digit as
    t -> 1 (checked below: error > 1e-2) and is 0 / 0 at t = 1."""
    one = torch.tensor(1.0)
    near_one = [torch.nextafter(one, torch.tensor(0.0)).item(), 1 - 1e-7, 1 - 1e-6, 1 - 1e-5, 1 - 1e-4, 1 - 1e-3]
    near_s = [torch.nextafter(torch.tensor(s), one).item(), s + 1e-6, s + 1e-4] if s > 0 else [1e-6, 1e-3]
    grid = torch.linspace(s, 1, 101).tolist()
    t32 = torch.tensor([*grid, *near_s, *near_one, 1.0], dtype=torch.float32)
    n = len(t32)
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t64 = t32.double()
    x_t = flow.transition(x_s, eps, s, t64).float().double()  # the float32 inputs, exactly
    v = (torch.randn(n, 2, generator=g, dtype=torch.float64) + eps - x_s).float().double()
    ref = _xs_float64(x_t, v, s, t64)
    got = flow.xs_from_velocity(x_t.float(), v.float(), s, t32)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = (got.double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert rel.max() < 1e-4, (t32[rel.argmax()].item(), rel.max().item())
    if s == 0:  # exactly x_t - t v
        assert torch.equal(got, x_t.float() - t32[:, None] * v.float())
    else:  # the divided form in float32 fails near t = 1, so this test can fail
        a, b = flow.transition_coefficients(s, t32)
        old = ((x_t.float().T - (b**2 / t32) * (x_t.float() + ((1 - t32) * v.float().T).T).T) / a).T
        bad = ((old.double() - ref).norm(dim=1) / ref.norm(dim=1))[torch.isfinite(old).all(1)]
        assert bad.max() > 1e-2 and not torch.isfinite(old[-1]).all()


def test_transition_coefficients_accurate_in_float32_near_s():
    """b^2 = (t - s)(t + a s) / (1 - s) has no cancellation as t -> s (t^2 - a^2 s^2 in float32 has)."""
    s = 0.75
    t32 = torch.tensor([s + 1e-6, s + 1e-5, s + 1e-3, 0.9, 1.0], dtype=torch.float32)
    t64 = t32.double()
    b2_64 = t64**2 - ((1 - t64) / (1 - s)) ** 2 * s**2
    _, b = flow.transition_coefficients(s, t32)
    assert ((b.double() ** 2 - b2_64).abs() / b2_64).max() < 1e-5


def test_dmd_weight_closed_form():
    for s, t in ((0.0, 0.5), (0.25, 0.5), (0.5, 0.9), (0.0, 0.02)):
        assert flow.dmd_weight(s, t) == pytest.approx((1 - t) ** 2 / ((1 - s) * t))
    assert flow.dmd_weight(0.0, 0.5) == pytest.approx(0.5)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(flow.dmd_weight(0.2, t), (1 - t) ** 2 / (0.8 * t))

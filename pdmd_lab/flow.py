"""Flow-matching formulas: every equation of ``docs/conventions.md`` §1-2 as a small pure function.

Conventions (rectified flow, as in SD3 / Wan / Qwen-Image and diffusers'
``FlowMatchEulerDiscreteScheduler``): ``t in [0, 1]`` with ``t = 1`` pure noise,
``x_t = (1 - t) x0 + t eps``, networks predict the velocity ``v = eps - x0``.

All functions broadcast a time given as a float, a 0-d tensor or a ``(B,)`` tensor
against data of any shape ``(B, ...)`` (points ``(B, 2)`` and images ``(B, C, H, W)`` alike).
"""

from __future__ import annotations

import math

import torch

Time = float | torch.Tensor


def append_dims(t: Time, x: torch.Tensor) -> torch.Tensor:
    """Shape ``t`` so that it broadcasts against ``x`` (k-diffusion ``append_dims``)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


# Time grids ------------------------------------------------------------------------------------

def shift_time(u: Time, shift: float) -> Time:
    """Time shift of SD3 / Wan / Qwen-Image: ``s u / (1 + (s - 1) u)``; ``shift > 1`` spends more steps near noise."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * u / (1 + (shift - 1) * u)


def step_times(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The ``num_steps + 1`` times of an Euler schedule, descending from 1 to 0, time-shifted.

    Float64 so that boundaries compare exactly; cast at use.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_time(u, shift)


def phase_boundaries(num_steps: int, num_phases: int, shift: float = 1.0) -> torch.Tensor:
    """Boundaries ``1 = t_0 > t_1 > ... > t_K = 0`` of ``num_phases`` phases over ``num_steps`` Euler steps.

    Phase k covers ``(t_k, t_{k-1}]`` and holds ``num_steps / num_phases`` consecutive steps
    (Phased DMD §3.1: the SNR range split into subintervals, one expert each).
    """
    ts = step_times(num_steps, shift)
    if not isinstance(num_phases, int) or not 1 <= num_phases <= num_steps:
        raise ValueError(f"num_phases must be an integer in [1, num_steps={num_steps}], got {num_phases!r}")
    if num_steps % num_phases:
        raise ValueError(f"num_phases={num_phases} must divide num_steps={num_steps}")
    return ts[:: num_steps // num_phases].clone()


# Noise path and conversions --------------------------------------------------------------------

def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: Time) -> torch.Tensor:
    """Forward process ``x_t = (1 - t) x0 + t eps`` (rectified flow)."""
    t = append_dims(t, x0)
    return (1 - t) * x0 + t * eps


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: Time) -> torch.Tensor:
    """``x0 = x_t - t v``."""
    return x_t - append_dims(t, x_t) * v


def eps_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: Time) -> torch.Tensor:
    """``eps = x_t + (1 - t) v``."""
    return x_t + (1 - append_dims(t, x_t)) * v


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, t: Time) -> torch.Tensor:
    """Inverse of :func:`x0_from_velocity`: ``v = (x_t - x0) / t``."""
    return (x_t - x0) / append_dims(t, x_t)


def snr(t: Time) -> Time:
    """Signal-to-noise ratio ``((1 - t) / t)^2``."""
    return ((1 - t) / t) ** 2


def logsnr(t: Time) -> Time:
    """``log snr(t) = 2 log((1 - t) / t)``."""
    if isinstance(t, torch.Tensor):
        return 2 * (torch.log1p(-t) - torch.log(t))
    return 2 * (math.log1p(-t) - math.log(t))


def cfg_velocity(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, standard form ``v_uncond + w (v_cond - v_uncond)`` (w = 1: none)."""
    return v_uncond + scale * (v_cond - v_uncond)


# Transition kernel between noise levels (Phased DMD Eq. 2) -------------------------------------

def transition_coefficients(s: Time, t: Time) -> tuple[Time, Time]:
    """Coefficients of ``x_t = a x_s + b eps``, Phased DMD Eq. 2.

    ``a = alpha_t / alpha_s = (1 - t) / (1 - s)`` and ``b^2 = sigma_t^2 - a^2 sigma_s^2 = t^2 - a^2 s^2``.
    Requires ``0 <= s <= t <= 1`` and ``s < 1``. ``b^2`` is computed as the equal product
    ``(t - s) (t + a s) / (1 - s)`` (since ``t - a s = (t - s) / (1 - s)``), which has no cancellation
    as ``t -> s``.
    """
    a = (1 - t) / (1 - s)
    b2 = (t - s) * (t + a * s) / (1 - s)
    b = torch.sqrt(torch.clamp(b2, min=0)) if isinstance(b2, torch.Tensor) else math.sqrt(max(b2, 0.0))
    return a, b


def transition(x_s: torch.Tensor, eps: torch.Tensor, s: Time, t: Time) -> torch.Tensor:
    """Diffuse a sample at level ``s`` to level ``t >= s``: ``x_t = a x_s + b eps`` (Eq. 2).

    Markov: diffusing ``p_s`` this way gives exactly ``p_t``; at ``s = 0`` it is :func:`add_noise`.
    """
    a, b = transition_coefficients(s, t)
    return append_dims(a, x_s) * x_s + append_dims(b, x_s) * eps


def subinterval_velocity_target(x_s: torch.Tensor, eps: torch.Tensor, s: Time, t: Time) -> torch.Tensor:
    """Unbiased velocity target within a subinterval, Phased DMD Eq. 11.

    For ``x_t = a x_s + b eps`` with ``x_s ~ p_s`` (not clean data):
    ``v* = ((t + (1 - t) s^2 / (1 - s)^2) / b) eps - x_s / (1 - s)``, whose conditional mean
    ``E[v* | x_t]`` is the velocity of the diffused distribution. At ``s = 0`` it is ``eps - x0``.
    """
    _, b = transition_coefficients(s, t)
    s_, t_, b_ = append_dims(s, x_s), append_dims(t, x_s), append_dims(b, x_s)
    return ((t_ + (1 - t_) * s_**2 / (1 - s_) ** 2) / b_) * eps - x_s / (1 - s_)


def subinterval_loss_weight(s: Time, t: Time) -> Time:
    """Clamped fake-score loss weight ``min(1, 10 b^2)``, Phased DMD Eq. 13 (tames ``1 / b`` as t -> s)."""
    _, b = transition_coefficients(s, t)
    w = 10 * b**2
    return torch.clamp(w, max=1.0) if isinstance(w, torch.Tensor) else min(1.0, w)


def xs_from_velocity(x_t: torch.Tensor, v: torch.Tensor, s: Time, t: Time) -> torch.Tensor:
    """Tweedie estimate of ``x_s`` through the transition (``docs/conventions.md`` §2): ``(x_t - b^2 eps_hat / t) / a``.

    ``eps_hat = x_t + (1 - t) v``. Dividing by ``a = (1 - t) / (1 - s)`` loses every digit as ``t -> 1``
    (and is 0 / 0 at ``t = 1``), so the same expression is used multiplied out:
    ``x_s_hat = ((1 - s) + a s^2 / t) x_t - ((1 - s) b^2 / t) v``, with the coefficients computed in
    float64. It is finite for every ``t`` in ``(0, 1]`` (at ``t = 1``: ``(1 - s)(x_t - v)``), and at
    ``s = 0`` it is exactly :func:`x0_from_velocity`, ``x_t - t v``.
    """
    if isinstance(s, (int, float)) and s == 0:
        return x0_from_velocity(x_t, v, t)
    s64 = torch.as_tensor(s, dtype=torch.float64, device=x_t.device)
    t64 = torch.as_tensor(t, device=x_t.device).to(torch.float64)
    a, b = transition_coefficients(s64, t64)
    c_x = (1 - s64) + a * s64**2 / t64
    c_v = (1 - s64) * b**2 / t64
    return append_dims(c_x, x_t) * x_t - append_dims(c_v, x_t) * v


def dmd_weight(s: Time, t: Time) -> Time:
    """Velocity-space DMD weight ``(1 - t)^2 / ((1 - s) t)``, Phased DMD Eq. 9/10."""
    return (1 - t) ** 2 / ((1 - s) * t)


def t_from_uniform(u: torch.Tensor, lo: float, hi: float, shift: float = 1.0) -> torch.Tensor:
    """Map ``u ~ U(0, 1)`` to a ``t`` strictly inside ``(lo, hi]``: time-shifted, then mapped onto the range.

    The shift acts within the range (``lo + (hi - lo) shift(u)``), so no shift can move ``t`` outside
    it. ``t >= lo + 1e-5 (hi - lo)``: at ``t = lo`` a subinterval target has ``b = 0`` (Phased DMD Eq. 11
    divides by it). The one mapping behind :func:`sample_t` and the trainer's ``Draw.t_between``.
    """
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"t range must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    if shift != 1.0:
        u = shift_time(u, shift)
    margin = 1e-5 * (hi - lo)
    return (lo + (hi - lo) * u).clamp(lo + margin, hi)


def sample_t(batch: int, lo: float, hi: float, *, shift: float = 1.0, generator=None, device=None,
             dtype=torch.float32) -> torch.Tensor:
    """Draw ``t`` in ``(lo, hi]`` for a batch: ``u ~ U(0, 1)`` in float64, then :func:`t_from_uniform`."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return t_from_uniform(u, lo, hi, shift).to(device=device, dtype=dtype)

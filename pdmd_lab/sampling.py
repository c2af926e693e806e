"""Samplers as plain functions with one signature (k-diffusion style), and their registry.

``sample_euler(model, x, ts, *, class_labels=None, cfg=1.0, callback=None, generator=None) -> x``
and ``sample_renoise(...)`` (same signature) run over any velocity callable ``v = model(x, t, labels)``:
a teacher, one network, or a student's experts routed by time. The callback receives a dict
(``x``, ``x_next``, ``i``, ``t``, ``t_next``, ``v``, ``x0_hat``) after every step, so notebooks and the
app draw trajectories without touching sampler code.

:data:`SAMPLERS` maps a name to a :class:`SamplerSpec` (the function plus how its initial state is
drawn); students store the name, and :func:`register_sampler` adds one (the discrete masked sampler
registers itself this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pdmd_lab import flow


def guided_velocity(model, x: torch.Tensor, t, class_labels=None, cfg: float = 1.0) -> torch.Tensor:
    """Velocity with classifier-free guidance in the standard form ``v_u + w (v_c - v_u)``.

    The conditional and unconditional passes share one batched call. ``cfg = 1`` (or no labels)
    is a single conditional call.
    """
    if cfg < 0:
        raise ValueError(f"cfg must be >= 0, got {cfg}")
    if cfg == 1.0 or class_labels is None:
        return model(x, t, class_labels)
    b = x.shape[0]
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=x.device).expand(b)
    null = torch.full_like(labels, model.num_classes)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(b)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    v_cond, v_uncond = v.chunk(2)
    return flow.cfg_velocity(v_uncond, v_cond, cfg)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``dx/dt = v`` from ``t`` to ``t_next``."""
    return x + (t_next - t) * v


def _run(model, x, ts, class_labels, cfg, callback, next_state):
    ts = torch.as_tensor(ts, dtype=torch.float64)
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = guided_velocity(model, x, t, class_labels, cfg)
        x0_hat = flow.x0_from_velocity(x, v, t)
        x_next = next_state(x, v, x0_hat, t, t_next)
        if callback is not None:
            callback({"x": x, "x_next": x_next, "i": i, "t": t, "t_next": t_next, "v": v, "x0_hat": x0_hat})
        x = x_next
    return x


@torch.no_grad()
def sample_euler(model, x: torch.Tensor, ts, *, class_labels=None, cfg: float = 1.0, callback=None,
                 generator=None) -> torch.Tensor:
    """Euler ODE sampler from ``ts[0]`` to ``ts[-1]`` (a descending sequence, e.g. :func:`flow.step_times`).

    NFE is ``len(ts) - 1`` steps, twice that with CFG. ``generator`` is unused (deterministic sampler)
    and kept for the common signature.
    """
    return _run(model, x, ts, class_labels, cfg, callback, lambda x, v, x0, t, t_next: euler_step(x, v, t, t_next))


@torch.no_grad()
def sample_renoise(model, x: torch.Tensor, ts, *, class_labels=None, cfg: float = 1.0, callback=None,
                   generator=None) -> torch.Tensor:
    """DMD2's multi-step sampler (Yin et al. 2024, §4.5): predict ``x0``, re-noise it to the next time.

    ``x_{t_{i+1}} = (1 - t_{i+1}) x0_hat + t_{i+1} eps`` with fresh ``eps`` from ``generator``; the last
    step returns ``x0_hat``.
    """
    def next_state(x, v, x0, t, t_next):
        if t_next <= 0:
            return x0
        return flow.add_noise(x0, torch.randn(x.shape, generator=generator).to(x.device), t_next)

    return _run(model, x, ts, class_labels, cfg, callback, next_state)


def gaussian_initial(shape, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """Initial state of a flow-matching sampler: standard normal noise ``(n, *shape)``."""
    return torch.randn((n, *shape), generator=generator).to(device)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler function and the draw of its initial state ``initial(shape, n, generator, device)``."""

    run: Callable
    initial: Callable = gaussian_initial


SAMPLERS: dict[str, SamplerSpec] = {"euler": SamplerSpec(sample_euler), "renoise": SamplerSpec(sample_renoise)}


def register_sampler(name: str, run: Callable, initial: Callable = gaussian_initial) -> None:
    """Make a sampler available to students by name (``Student(..., sampler=name)``)."""
    SAMPLERS[name] = SamplerSpec(run, initial)


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def nfe(num_steps: int, cfg: float) -> int:
    """Network evaluations of an Euler run: one per step, two with classifier-free guidance."""
    return num_steps * (1 if cfg == 1.0 else 2)


def trajectory(model, x: torch.Tensor, ts, **kwargs) -> list[torch.Tensor]:
    """The states ``[x_{t_0}, x_{t_1}, ..., x_{t_N}]`` of an Euler run, for figures."""
    states = [x]
    sample_euler(model, x, ts, callback=lambda d: states.append(d["x_next"]), **kwargs)
    return states

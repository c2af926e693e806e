"""Samplers as plain functions with one signature (k-diffusion style).

``sample_euler(model, x, ts, *, class_labels=None, cfg=1.0, callback=None, generator=None) -> x``.
The callback receives a dict (``x``, ``i``, ``t``, ``t_next``, ``v``, ``x0_hat``) after every step,
so notebooks and the app draw trajectories without touching sampler code.
"""

from __future__ import annotations

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


@torch.no_grad()
def sample_euler(model, x: torch.Tensor, ts, *, class_labels=None, cfg: float = 1.0, callback=None,
                 generator=None) -> torch.Tensor:
    """Euler ODE sampler for the probability-flow ODE ``dx/dt = v`` from ``ts[0]`` to ``ts[-1]``.

    ``ts`` is a descending sequence of times (e.g. :func:`pdmd_lab.flow.step_times`). NFE is
    ``len(ts) - 1`` steps, twice that with CFG. ``generator`` is unused (deterministic sampler) and
    kept for the common signature.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = guided_velocity(model, x, t, class_labels, cfg)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": t_next, "v": v, "x0_hat": flow.x0_from_velocity(x, v, t)})
        x = x + (t_next - t) * v
    return x


def nfe(num_steps: int, cfg: float) -> int:
    """Network evaluations of an Euler run: one per step, two with classifier-free guidance."""
    return num_steps * (1 if cfg == 1.0 else 2)


def trajectory(model, x: torch.Tensor, ts, **kwargs) -> list[torch.Tensor]:
    """The states ``[x_{t_0}, x_{t_1}, ..., x_{t_N}]`` of an Euler run, for figures."""
    states = [x]

    def keep(d):
        states.append(d["x"] + (d["t_next"] - d["t"]) * d["v"])

    sample_euler(model, x, ts, callback=keep, **kwargs)
    return states

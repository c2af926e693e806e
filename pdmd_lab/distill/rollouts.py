"""Generator rollouts during training: how each method turns noise into the sample that DMD judges.

Every rollout returns a :class:`Rollout` with the output ``x`` and its noise level ``s``
(``s = 0`` for clean outputs, ``s = t_k`` for the end of Phased DMD phase k). With ``grad=False``
the whole rollout runs without autograd (fake-score updates); with ``grad=True`` only the parts the
method lets the DMD gradient reach keep a graph. Random draws come from a
:class:`~pdmd_lab.distill.methods.Draw` (global batch, sliced to this process).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from pdmd_lab import flow
from pdmd_lab.sampling import euler_step


@dataclass
class Rollout:
    x: torch.Tensor  # (B, ...) output at level s
    s: float  # noise level of x
    v_first: torch.Tensor | None = None  # DP-DMD: the first step's velocity (with graph)
    exit_step: int = 0  # 1-based step that carried the gradient


def one_step(net, z: torch.Tensor, labels, *, grad: bool = True) -> Rollout:
    """One-step DMD: ``x0 = z - v_G(z, 1)``."""
    with nullcontext() if grad else torch.no_grad():
        x0 = z - net(z, 1.0, labels)
    return Rollout(x0, 0.0, exit_step=1)


def sgts(net, z: torch.Tensor, labels, ts: list[float], draw, *, grad: bool = True) -> Rollout:
    """DMD2 backward simulation with stochastic gradient truncation (Yin et al. 2024, §4.5).

    Draw the exit step ``j in {1..N}``; steps before it run without grad, each predicting ``x0`` and
    re-noising it to the next time with fresh noise; step ``j`` runs with grad and its ``x0``
    prediction is the output (``s = 0``).
    """
    n = len(ts) - 1
    j = draw.randint(1, n)
    x = z
    with torch.no_grad():
        for i in range(j - 1):
            x0 = flow.x0_from_velocity(x, net(x, ts[i], labels), ts[i])
            x = flow.add_noise(x0, draw.randn_like(x), ts[i + 1])
    with nullcontext() if grad else torch.no_grad():
        x0 = flow.x0_from_velocity(x, net(x, ts[j - 1], labels), ts[j - 1])
    return Rollout(x0, 0.0, exit_step=j)


def phased(experts, phase: int, z: torch.Tensor, labels, ts: list[float], boundaries: list[float],
           draw, *, grad: bool = True) -> Rollout:
    """Phased DMD rollout for phase ``k = phase + 1`` (Phased DMD §3.2, Alg. 1).

    Frozen experts ``1..k-1`` take Euler steps from noise to ``x_{t_{k-1}}`` without grad; expert k
    takes the phase's Euler steps to ``x_{t_k}``. When the phase holds several steps, SGTS applies
    inside it: the exit step ``j`` is drawn, steps before it run without grad, and step ``j`` jumps
    with grad straight to the phase end ``t_k`` (the phase's analogue of predicting ``x0``).
    """
    num_phases = len(boundaries) - 1
    m = (len(ts) - 1) // num_phases  # steps per phase
    first = phase * m
    s = boundaries[phase + 1]
    j = draw.randint(1, m) if m > 1 else 1
    x = z
    with torch.no_grad():
        for i in range(first + j - 1):
            expert = experts[i // m]
            x = euler_step(x, expert(x, ts[i], labels), ts[i], ts[i + 1])
    i = first + j - 1
    with nullcontext() if grad else torch.no_grad():
        x = euler_step(x, experts[phase](x, ts[i], labels), ts[i], s)
    return Rollout(x, s, exit_step=j)


def dp_dmd(net, z: torch.Tensor, labels, ts: list[float], *, grad: bool = True) -> Rollout:
    """DP-DMD rollout: Euler steps from noise; step 1's output is detached so the DMD gradient
    never reaches step 1's graph; steps 2..N keep the graph and the final ``x0`` is the output.

    The first step's velocity is returned for the anchor loss (:func:`losses.dp_dmd_anchor_loss`).
    """
    with nullcontext() if grad else torch.no_grad():
        v_first = net(z, ts[0], labels)
        x = euler_step(z, v_first, ts[0], ts[1]).detach()
        for i in range(1, len(ts) - 1):
            x = euler_step(x, net(x, ts[i], labels), ts[i], ts[i + 1])
    return Rollout(x, 0.0, v_first=v_first, exit_step=len(ts) - 1)

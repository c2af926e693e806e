"""Distillation losses, apart from networks (EDM ``training/loss.py`` style).

Each loss takes the nets it needs and the noise it uses, returns a per-sample loss ``(B,)`` (or a
gradient) and leaves reduction and weighting to the trainer. All work on ``(B, 2)`` points and
``(B, C, H, W)`` images alike.
"""

from __future__ import annotations

import torch

from pdmd_lab import flow

WEIGHTINGS = ("paper", "dmd2")


def surrogate_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 mean_d (x - sg(x - grad))^2`` per sample; its gradient w.r.t. ``x`` is ``grad / D``.

    The DMD trick (DMD2 ``edm_guidance.py``): a gradient computed without autograd is pushed
    into the generator through a surrogate whose derivative is that gradient. Averaged over the
    ``D`` data dimensions, like DMD2's and DP-DMD's own code and like every other loss here, so
    that a weight between two losses (DP-DMD's ``lambda``) means the same for 2D points and images.
    """
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).flatten(1).mean(1)


@torch.no_grad()
def dmd_gradient(x: torch.Tensor, s: float, t: torch.Tensor, eps: torch.Tensor, real_score, fake_score,
                 class_labels, weighting: str = "dmd2") -> tuple[torch.Tensor, dict]:
    """DMD generator gradient for an output ``x`` at noise level ``s`` (``s = 0``: clean output).

    ``x_t = a x + b eps`` (Phased DMD Eq. 2), then
    * ``"paper"``: ``g = w (v_real - v_fake)`` with ``w = (1 - t)^2 / ((1 - s) t)`` (Phased DMD Eq. 9/10);
    * ``"dmd2"``: ``g = (xs_fake - xs_real) / mean|x - xs_real|`` per sample with ``x_s``-space Tweedie
      predictions (``x0`` predictions at ``s = 0``; DMD2, Yin et al. 2024, Eq. 7 normalisation).
    ``real_score`` is the teacher with CFG already applied. Descending along ``g`` moves ``x`` towards
    the real distribution. Returns ``(g, logs)``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    x_t = flow.transition(x, eps, s, t)
    v_real = real_score(x_t, t, class_labels)
    v_fake = fake_score(x_t, t, class_labels)
    if weighting == "paper":
        g = flow.append_dims(flow.dmd_weight(s, t), x) * (v_real - v_fake)
    else:
        xs_real = flow.xs_from_velocity(x_t, v_real, s, t)
        xs_fake = flow.xs_from_velocity(x_t, v_fake, s, t)
        norm = (x - xs_real).abs().flatten(1).mean(1).clamp_min(1e-8)
        g = (xs_fake - xs_real) / flow.append_dims(norm, x)
    return g, {"dmd_grad_norm": g.flatten(1).norm(dim=1).mean().item()}


def fake_score_loss(fake_score, x_s: torch.Tensor, s: float, t: torch.Tensor, eps: torch.Tensor,
                    class_labels) -> torch.Tensor:
    """Fake-score loss on generator samples ``x_s`` at level ``s``, per sample.

    ``s = 0``: flow matching ``|| F(x_t, t) - (eps - x0) ||^2``. ``s > 0``: the unbiased subinterval
    target of Phased DMD Eq. 11 with the clamped weight ``min(1, 10 b^2)`` of Eq. 13.
    """
    x_s = x_s.detach()
    x_t = flow.transition(x_s, eps, s, t)
    v = fake_score(x_t, t, class_labels)
    if s == 0:
        return ((v - (eps - x_s)) ** 2).flatten(1).mean(1)
    target = flow.subinterval_velocity_target(x_s, eps, s, t)
    return flow.subinterval_loss_weight(s, t) * ((v - target) ** 2).flatten(1).mean(1)


def naive_fake_score_loss(fake_score, x_s, s, t, eps, class_labels) -> torch.Tensor:
    """The biased target ``eps - x_s`` at ``s > 0`` (Phased DMD Fig. 2), kept for teaching and tests."""
    x_t = flow.transition(x_s.detach(), eps, s, t)
    return ((fake_score(x_t, t, class_labels) - (eps - x_s.detach())) ** 2).flatten(1).mean(1)


def dp_dmd_anchor_loss(v_first: torch.Tensor, v_anchor: torch.Tensor) -> torch.Tensor:
    """DP-DMD first-step anchor, per sample: ``|| v_first - sg(v_anchor) ||^2`` (mean over dims).

    ``v_anchor = (z - z_anchor) / (1 - t_anchor)`` is the average velocity of the teacher's CFG ODE
    from the same noise ``z`` down to ``t_anchor``; it keeps the first step on the teacher's
    diverse global layout while DMD refines the later steps.
    """
    return ((v_first - v_anchor.detach()) ** 2).flatten(1).mean(1)

"""D-MMD losses (``docs/conventions.md`` §3), apart from any network or trainer.

Hoogeboom, Ruhe, Heek, Mensink, Salimans, "Beyond Single Tokens: Distilling Discrete Diffusion Models
via Discrete MMD" (arXiv 2603.20155): moment matching distillation (Salimans et al. 2024) carried over
to masked diffusion. Three networks: the frozen teacher ``x_theta``, the few-step generator ``x_eta``
(with a Gaussian noise input) and the auxiliary ``x_phi``; both start from the teacher.

One iteration (:func:`rollout`):

1. ``s ~ U(0, 1)``, ``delta ~ U(0, 1/k)``, ``t = min(1, s + delta)``, ``k`` the student's step count;
2. ``z_t`` = **data** noised to ``t`` (never a student rollout);
3. ``p = x_eta(z_t, t, c, eps)`` (carry-over at unmasked positions);
4. ``x ~ Cat(p)``, ``z_s ~ q(z_s | z_t, x)``, both without gradient.

Then the generator step (:func:`generator_loss`, updates ``eta``) or the auxiliary step
(:func:`auxiliary_loss`, updates ``phi``). Both are computed on the positions still masked in ``z_s``;
weight 1 and the mean over those positions per sample **(ours)**; the trainer averages over the batch.
Each loss function returns a per-sample loss ``(B,)`` and a dict of floats to log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdmd_lab.discrete.masking import draw_categorical, guided_logits, mask_tokens, reveal, step_times
from pdmd_lab.discrete.teacher import masked_cross_entropy

TARGETS = ("soft", "hard")  # auxiliary targets: y = sg(p) (same eps) or y = onehot(x)


class GeneratorSource:
    """Per-sample random numbers ``(B, *shape)`` from a torch generator (standalone use, tests)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def rand(self, batch: int, *shape) -> torch.Tensor:
        return torch.rand((batch, *shape), generator=self.generator)

    def randn(self, batch: int, *shape) -> torch.Tensor:
        return torch.randn((batch, *shape), generator=self.generator)


class DrawSource:
    """Per-sample random numbers from the engine's :class:`~pdmd_lab.distill.methods.Draw`: drawn for the
    global batch and sliced to this process, so N processes draw what one process does. Uniforms are
    ``Phi(N(0, 1))`` (the Draw's per-sample Gaussians through the normal CDF)."""

    def __init__(self, draw):
        self.draw = draw

    def randn(self, batch: int, *shape) -> torch.Tensor:
        if batch != self.draw.local:
            raise ValueError(f"batch {batch} differs from this process's share of the draw ({self.draw.local})")
        return self.draw.randn(*shape).cpu()

    def rand(self, batch: int, *shape) -> torch.Tensor:
        return torch.special.ndtr(self.randn(batch, *shape).double()).float()


def as_source(rng) -> GeneratorSource | DrawSource:
    """A random source from a torch generator (or None), or the source itself."""
    if rng is None or isinstance(rng, torch.Generator):
        return GeneratorSource(rng)
    return rng


def _unwrap(net):
    """The module behind a data-parallel wrapper (its attributes: ``vocab_size``, ``noise_dim``...)."""
    return getattr(net, "module", net)


def sample_times(batch: int, steps: int, generator: torch.Generator | None = None, *,
                 u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``docs/conventions.md`` §3 step 1: ``s ~ U(0, 1)``, ``delta ~ U(0, 1/k)``, ``t = min(1, s + delta)``;
    ``(B,)`` each.

    ``u`` ``(B, 2)``: pre-drawn uniforms for ``s`` and ``delta``.
    """
    step_times(steps)  # validates k
    if u is None:
        u = torch.rand(batch, 2, generator=generator)
    s, delta = u[:, 0], u[:, 1] / steps
    return s, (s + delta).clamp(max=1.0)


@dataclass
class Rollout:
    """One D-MMD draw: times, data noised to ``t``, the generator's probabilities, its sample and ``z_s``."""

    s: torch.Tensor  # (B,)
    t: torch.Tensor  # (B,)
    z_t: torch.Tensor  # (B, *S) data noised to t
    eps: torch.Tensor | None  # the generator's noise input, or None without one
    p: torch.Tensor  # (B, *S, V) generator probabilities (with grad in the generator step)
    x: torch.Tensor  # (B, *S) x ~ Cat(p), no grad
    z_s: torch.Tensor  # (B, *S) z_s ~ q(z_s | z_t, x), no grad

    @property
    def still_masked(self) -> torch.Tensor:
        """Positions masked in ``z_s`` ``(B, *S)``: the only ones the losses see."""
        return self.z_s == self.p.shape[-1]


def rollout(generator_net, x0: torch.Tensor, labels, steps: int, rng=None, *, grad: bool = False) -> Rollout:
    """``docs/conventions.md`` §3 steps 1-4 on clean data ``x0``; ``grad`` keeps the graph of ``p`` (generator step).

    ``rng``: a torch generator, None, or a source (:class:`DrawSource` in the trainer).
    """
    net = _unwrap(generator_net)
    v = net.vocab_size
    src = as_source(rng)
    b, shape, dev = x0.shape[0], tuple(x0.shape[1:]), x0.device
    s, t = sample_times(b, steps, u=src.rand(b, 2))
    s, t = s.to(dev), t.to(dev)
    z_t = mask_tokens(x0, t, v, u=src.rand(b, *shape))  # from DATA
    eps = src.randn(b, *net.noise_shape()).to(dev) if net.noise_dim else None
    with torch.set_grad_enabled(grad):
        logits = generator_net(z_t, t, labels) if eps is None else generator_net(z_t, t, labels, eps=eps)
        p = torch.softmax(logits.float(), -1)
    x = draw_categorical(p.detach(), u=src.rand(b, *shape))
    z_s = reveal(z_t, x, s, t, v, u=src.rand(b, *shape))
    return Rollout(s, t, z_t, eps, p, x, z_s)


# The two objectives on given distributions ---------------------------------------------------

def generator_objective(p: torch.Tensor, logp_aux: torch.Tensor, logp_teacher: torch.Tensor,
                        masked: torch.Tensor) -> torch.Tensor:
    """``L_gen = sum_c p_c (sg(log x_phi)_c - sg(log x_theta)_c)`` = ``CE(p | x_theta) - CE(p | x_phi)``.

    ``docs/conventions.md`` §3 step 5: differentiable in ``p`` (no REINFORCE); the log-probabilities are detached here.
    Per-sample mean over the ``masked`` positions ``(B, *S)``; returns ``(B,)``.
    """
    diff = (logp_aux.detach() - logp_teacher.detach()).float()
    per_pos = (p * diff).sum(-1)
    per_pos = torch.where(masked, per_pos, torch.zeros_like(per_pos)).flatten(1)
    return per_pos.sum(1) / masked.flatten(1).sum(1).clamp_min(1)


def auxiliary_objective(aux_logits: torch.Tensor, target: torch.Tensor, p_teacher: torch.Tensor,
                        masked: torch.Tensor) -> torch.Tensor:
    """``L_aux = CE(y | x_phi) + CE(x_theta | x_phi)`` on the ``masked`` positions (``docs/conventions.md`` §3 step 6).

    ``target`` is tokens (hard, ``y = onehot(x)``) or probabilities (soft, ``y = sg(p)``). With the
    generator fixed the optimum is ``x_phi = (E_g[x | z_s] + x_theta(z_s)) / 2``. Returns ``(B,)``.
    """
    if target.dtype.is_floating_point:
        target = target.detach()
    return (masked_cross_entropy(aux_logits, target, masked)
            + masked_cross_entropy(aux_logits, p_teacher.detach(), masked))


# The losses as the trainer calls them --------------------------------------------------------

def _teacher_probs(teacher, z_s, s, labels, cfg: float) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(guided_logits(teacher, z_s, s, labels, cfg).float(), -1)


def generator_loss(generator_net, auxiliary, teacher, x0: torch.Tensor, labels, *, steps: int, cfg: float = 1.0,
                   rng=None) -> tuple[torch.Tensor, dict]:
    """The generator step's loss (generator only): a rollout with grad, then :func:`generator_objective`."""
    r = rollout(generator_net, x0, labels, steps, rng, grad=True)
    p_teacher = _teacher_probs(teacher, r.z_s, r.s, labels, cfg)
    with torch.no_grad():
        logp_aux = F.log_softmax(auxiliary(r.z_s, r.s, labels).float(), -1)
    masked = r.still_masked
    loss = generator_objective(r.p, logp_aux, torch.log(p_teacher.clamp_min(1e-30)), masked)
    logs = {"gen_loss": float(loss.detach().mean()), "masked_share": float(masked.float().mean()),
            "gen_entropy": float(_entropy(r.p.detach(), r.z_t == r.p.shape[-1]))}
    return loss, logs


def auxiliary_loss(generator_net, auxiliary, teacher, x0: torch.Tensor, labels, *, steps: int, cfg: float = 1.0,
                   target: str = "soft", rng=None) -> tuple[torch.Tensor, dict]:
    """The auxiliary step's loss (updates the auxiliary only): a rollout without grad, then :func:`auxiliary_objective`.

    ``target="soft"`` uses ``y = sg(p)`` from the same ``eps`` that drew ``x`` (lower variance, same
    optimum); ``"hard"`` uses ``y = onehot(x)``.
    """
    if target not in TARGETS:
        raise ValueError(f"auxiliary target must be one of {TARGETS}, got {target!r}")
    r = rollout(generator_net, x0, labels, steps, rng, grad=False)
    p_teacher = _teacher_probs(teacher, r.z_s, r.s, labels, cfg)
    y = r.p if target == "soft" else r.x
    loss = auxiliary_objective(auxiliary(r.z_s, r.s, labels), y, p_teacher, r.still_masked)
    return loss, {"aux_loss": float(loss.detach().mean())}


def _entropy(p: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of ``p`` over the ``masked`` positions."""
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return h[masked].mean() if masked.any() else torch.zeros(())

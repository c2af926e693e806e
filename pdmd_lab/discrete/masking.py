"""Masked (absorbing-state) diffusion: forward masking, the reveal posterior, the k-step ancestral sampler.

Conventions (``docs/conventions.md`` §3):

* tokens ``0..V-1``; the mask token is ``V``. A token tensor has shape ``(B, *S)`` (``S = (2,)`` for the
  two-token toy, ``(1, 28, 28)`` for binarised MNIST); logits and probabilities ``(B, *S, V)``, over the
  ``V`` real tokens only (the mask is never in the softmax).
* ``t in [0, 1]``, ``t = 1`` all masked; keep probability ``alpha_t = 1 - t`` **(ours: linear)**.
* a masked denoiser is called ``logits = net(z_t, t, class_labels)``; class ``num_classes`` is the
  null class; at unmasked positions its distribution is the one-hot of the visible token (carry-over).
* a generator with a Gaussian noise input (D-MMD) has ``noise_dim > 0`` and ``draw_noise``; it is
  called ``net(z_t, t, class_labels, eps=eps)``, and the sampler draws a fresh ``eps`` every step.
"""

from __future__ import annotations

import torch

from pdmd_lab.data import _check_tokens as check_tokens  # noqa: F401  (one validator for tokens)

NEG = -1e4  # logit of the impossible tokens at a visible position (finite: 0 * NEG stays 0)


def _uniform(shape, generator: torch.Generator | None, device, u: torch.Tensor | None = None) -> torch.Tensor:
    """``U(0, 1)`` draws from a (CPU) generator, moved to ``device``: seeded runs agree across devices.

    ``u``, when given, holds the draws already (the trainer draws them for the global batch).
    """
    if u is not None:
        if tuple(u.shape) != tuple(shape):
            raise ValueError(f"pre-drawn uniforms have shape {tuple(u.shape)}, expected {tuple(shape)}")
        return u.to(device)
    return torch.rand(shape, generator=generator).to(device)


def _per_sample(t, z: torch.Tensor) -> torch.Tensor:
    """``t`` (scalar or ``(B,)``) as a float tensor that broadcasts against ``z`` of shape ``(B, *S)``."""
    t = torch.as_tensor(t, dtype=torch.float32, device=z.device)
    if t.ndim == 0:
        return t
    if t.shape != (z.shape[0],):
        raise ValueError(f"times must be a scalar or have shape ({z.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (z.ndim - 1)))


# Schedule and posterior -----------------------------------------------------------------------

def alpha(t):
    """Keep probability ``alpha_t = 1 - t`` (ours: linear; ``docs/conventions.md`` §3)."""
    return 1 - t


def reveal_probability(s, t):
    """Reveal posterior rate ``r(s, t) = (alpha_s - alpha_t) / (1 - alpha_t)`` (``docs/conventions.md`` §3);
    ``(t - s) / t`` here.

    The probability that a position masked at ``t`` is unmasked at ``s < t``. Works on floats and
    tensors; ``r(0, t) = 1`` (everything revealed), ``r(s, s) = 0``.
    """
    s_t, t_t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    if (s_t < 0).any() or (t_t > 1).any() or (s_t > t_t).any() or (t_t <= 0).any():
        raise ValueError(f"reveal_probability needs 0 <= s <= t <= 1 and t > 0, got s={s}, t={t}")
    r = (alpha(s_t) - alpha(t_t)) / (1 - alpha(t_t))
    return r if isinstance(s, torch.Tensor) or isinstance(t, torch.Tensor) else float(r)


def step_times(k: int) -> torch.Tensor:
    """The grid ``t_j = j / k`` of the ``k``-step sampler, descending: ``[1, (k-1)/k, ..., 0]``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"steps must be an integer >= 1, got {k!r}")
    return torch.arange(k, -1, -1, dtype=torch.float64) / k


# Tokens ----------------------------------------------------------------------------------------

def all_masked(batch: int, shape, vocab_size: int, device=None) -> torch.Tensor:
    """The sampler's start ``z_1``: every position holds the mask token ``V``."""
    return torch.full((batch, *shape), vocab_size, dtype=torch.long, device=device)


def mask_tokens(x: torch.Tensor, t, vocab_size: int, generator: torch.Generator | None = None, *,
                u: torch.Tensor | None = None) -> torch.Tensor:
    """Forward process ``q(z_t | x)``: each position keeps its token with probability ``alpha_t``, else is ``V``."""
    x = check_tokens(x, vocab_size)
    keep = _uniform(x.shape, generator, x.device, u) < alpha(_per_sample(t, x))
    return torch.where(keep, x, torch.full_like(x, vocab_size))


def reveal(z_t: torch.Tensor, x: torch.Tensor, s, t, vocab_size: int, generator: torch.Generator | None = None, *,
           u: torch.Tensor | None = None) -> torch.Tensor:
    """Posterior ``q(z_s | z_t, x)``, ``s < t``: a masked position becomes ``x`` with probability ``r(s, t)``.

    Unmasked positions of ``z_t`` stay. ``s`` and ``t`` are scalars or ``(B,)``; where ``s = 0``
    every position is revealed.
    """
    s_b, t_b = _per_sample(s, z_t), _per_sample(t, z_t)
    r = (alpha(s_b) - alpha(t_b)) / (1 - alpha(t_b)).clamp_min(1e-12)
    r = torch.where(s_b <= 0, torch.ones_like(r), r)
    show = (z_t == vocab_size) & (_uniform(z_t.shape, generator, z_t.device, u) < r)
    return torch.where(show, x, z_t)


def carry_over(logits: torch.Tensor, z: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Force the one-hot of the visible token at unmasked positions of ``z``: ``(B, *S, V)`` logits.

    The visible token gets logit 0 and the others ``NEG``, so the softmax is one-hot (to float precision).
    """
    visible = z != vocab_size  # (B, *S)
    onehot = torch.nn.functional.one_hot(z.clamp(max=vocab_size - 1), vocab_size).to(logits.dtype)
    forced = (1 - onehot) * NEG
    return torch.where(visible[..., None], forced, logits)


def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None = None, *,
                     u: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` ``(..., V)`` by inverse CDF: ``(...)`` long tokens."""
    u = _uniform(probs.shape[:-1], generator, probs.device, u)
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    x = (cdf < u[..., None]).sum(-1)
    return x.clamp(max=probs.shape[-1] - 1)


# Guidance and sampling -----------------------------------------------------------------------

def _call(model, z, t, labels, eps):
    return model(z, t, labels) if eps is None else model(z, t, labels, eps=eps)


def guided_logits(model, z: torch.Tensor, t, class_labels=None, cfg: float = 1.0, eps=None) -> torch.Tensor:
    """Classifier-free guidance on logits, ``l = l_u + w (l_c - l_u)`` (ours; ``docs/conventions.md`` §3);
    ``w = 1`` is none.

    The conditional and unconditional passes share one batched call (and the same ``eps``).
    """
    if cfg < 0:
        raise ValueError(f"cfg must be >= 0, got {cfg}")
    if cfg == 1.0 or class_labels is None:
        return _call(model, z, t, class_labels, eps)
    b = z.shape[0]
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=z.device).expand(b)
    null = torch.full_like(labels, model.num_classes)
    tt = torch.as_tensor(t, dtype=torch.float32, device=z.device).expand(b)
    e2 = None if eps is None else torch.cat([eps, eps])
    logits = _call(model, torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([labels, null]), e2)
    l_c, l_u = logits.chunk(2)
    return l_u + cfg * (l_c - l_u)  # both carry over the visible tokens, so the mix does too


def step_net(model, t: float):
    """The network a sampler routes the step at ``t`` to: a student's expert (``expert_index``), else ``model``."""
    if hasattr(model, "expert_index") and hasattr(model, "experts"):
        return model.experts[model.expert_index(t)]
    return model


@torch.no_grad()
def sample_masked(model, z: torch.Tensor, ts, *, class_labels=None, cfg: float = 1.0, callback=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestral sampler of masked diffusion over the descending times ``ts`` (``docs/conventions.md`` §3).
    NFE = ``len(ts) - 1``.

    Each step ``t -> s``: ``x ~ Cat(softmax(l))`` per position independently (``l`` the guided logits),
    then ``z_s ~ q(z_s | z_t, x)``. A network with ``noise_dim > 0`` (a D-MMD generator) gets a fresh
    Gaussian ``eps`` every step. ``model`` is a masked denoiser or a sampler object whose experts are
    (a :class:`~pdmd_lab.student.Student`); negative tokens in ``z`` count as masked (the sampler
    registry draws the initial state without knowing ``V``). The callback receives a dict (``z``,
    ``x_next`` (= ``z_s``), ``i``, ``t``, ``t_next``, ``probs``, ``x``) after every step.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2 or not (ts[1:] < ts[:-1]).all() or ts[0] > 1 or ts[-1] < 0:
        raise ValueError(f"ts must be a descending sequence in [0, 1] with at least 2 entries, got {ts.tolist()}")
    v = step_net(model, float(ts[0])).vocab_size
    z = torch.as_tensor(z)
    z = torch.where(z < 0, torch.full_like(z, v), z) if not z.dtype.is_floating_point else z
    z = check_tokens(z, v, allow_mask=True, name="z")
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        net = step_net(model, t)
        eps = net.draw_noise(z.shape[0], generator).to(z.device) if getattr(net, "noise_dim", 0) else None
        logits = guided_logits(model if eps is None else net, z, t, class_labels, cfg, eps)
        probs = torch.softmax(logits.float(), -1)
        x = draw_categorical(probs, generator)
        z_next = reveal(z, x, s, t, v, generator)
        if callback is not None:
            callback({"z": z, "x_next": z_next, "i": i, "t": t, "t_next": s, "probs": probs, "x": x})
        z = z_next
    return z


def masked_initial(shape, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Initial state of the masked sampler for the sampler registry: every position masked.

    Written as ``-1`` (masked whatever ``V`` is; :func:`sample_masked` maps it to ``V``), since the
    registry's initial-state function does not know the vocabulary.
    """
    return torch.full((n, *shape), -1, dtype=torch.long, device=device)

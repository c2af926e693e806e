"""The exact two-token oracle: a class-conditional 2D mixture discretised on a ``V x V`` grid (``docs/conventions.md``).

The joint tables (:class:`~pdmd_lab.data.TokenJoint`, :func:`~pdmd_lab.data.discretise`,
:func:`~pdmd_lab.data.ring_mix_tokens`) are the dataset's exact law and live in :mod:`pdmd_lab.data`,
beside the Gaussian mixtures; :class:`TokenOracle` here is the masked-diffusion denoiser they give.

A point ``(x, y)`` becomes the two tokens ``(a, b)`` of its grid cells, so the joint ``P(a, b | c)`` is
a table and the masked-diffusion denoiser needs no network:

* at ``(m, m)``: the marginals ``P1``, ``P2``;
* at ``(a, m)``: one-hot ``a`` and ``P(. | a)``; at ``(m, b)``: ``P(. | b)`` and one-hot ``b``.

(``m`` is the mask.) The tables are smoothed, ``(1 - 1e-3) P + 1e-3 / V^2``, so no log is ``-inf``.
Each Gaussian mode is a product on the grid, so the joint is a mixture of products
(:meth:`TokenJoint.components`); a generator that picks a component with its noise and outputs its
factors samples the joint exactly, which the tests use.
"""

from __future__ import annotations

import torch
from torch import nn

from pdmd_lab.data import TokenJoint, discretise, ring_mix_tokens  # noqa: F401  (the joint tables live with the data)
from pdmd_lab.discrete.masking import carry_over


class TokenOracle(nn.Module):
    """The exact masked-diffusion denoiser of a :class:`TokenJoint`: ``logits = net(z, t, class_labels)``.

    ``E[x | z_t]`` does not depend on ``t`` in masked diffusion (only on which tokens are visible),
    so ``t`` is accepted and ignored. Label ``num_classes`` (or None) is the null class.
    """

    teacher_kind = "discrete"  # what the distillation engine checks against a method's teacher_kind
    noise_dim = 0

    def __init__(self, joint: TokenJoint, dataset: str = ""):
        super().__init__()
        self.joint = joint
        self.dataset = dataset
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.joint.vocab_size

    @property
    def num_classes(self) -> int:
        return self.joint.num_classes

    def forward(self, z: torch.Tensor, t=None, class_labels=None) -> torch.Tensor:
        labels = None if class_labels is None else torch.as_tensor(class_labels).cpu()
        probs = self.joint.denoiser_probs(z, labels)
        logits = torch.log(probs.clamp_min(1e-300)).float().to(z.device)
        return carry_over(logits, z, self.vocab_size)

"""The exact two-token oracle (DMMD.md §4): a class-conditional 2D mixture discretised on a ``V x V`` grid.

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

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from torch import nn

from pdmd_lab.data import GaussianMixture, ring_mix
from pdmd_lab.discrete.masking import carry_over, check_tokens, step_times


def _cell_masses(mean: torch.Tensor, std: float, edges: torch.Tensor) -> torch.Tensor:
    """Mass of ``N(mean, std^2)`` in each cell of ``edges`` (``V + 1`` edges): ``(V,)`` float64."""
    cdf = 0.5 * (1 + torch.erf((edges - mean) / (std * math.sqrt(2))))
    return cdf[1:] - cdf[:-1]


@dataclass
class TokenJoint:
    """``P(a, b | c)`` on a ``V x V`` grid as a mixture of ``J`` products, for ``C`` classes plus the null class.

    ``P(a, b | c) = sum_j weights[c, j] first[j, a] second[j, b]``; row ``C`` of ``weights`` is the
    unconditional joint (the class-prior mixture), so classifier-free guidance is exact too.
    """

    weights: torch.Tensor  # (C + 1, J), rows sum to 1
    first: torch.Tensor  # (J, V), rows sum to 1
    second: torch.Tensor  # (J, V), rows sum to 1
    edges: torch.Tensor  # (V + 1,) cell edges of both coordinates, for points <-> tokens

    @property
    def vocab_size(self) -> int:
        return self.first.shape[1]

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0] - 1

    @cached_property
    def tables(self) -> torch.Tensor:
        """The joints ``(C + 1, V, V)``, float64."""
        return torch.einsum("cj,ja,jb->cab", self.weights, self.first, self.second)

    def _rows(self, labels, n: int | None = None) -> torch.Tensor:
        """Labels as a long tensor; None (or ``C``) is the unconditional joint. Bad labels raise ValueError."""
        if labels is None:
            return torch.full((n or 1,), self.num_classes, dtype=torch.long)
        y = torch.as_tensor(labels, dtype=torch.long).cpu().reshape(-1)
        if n is not None:
            y = y.expand(n).clone() if y.numel() == 1 else y
        if y.numel() and (y.min() < 0 or y.max() > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        return y

    def table(self, label=None) -> torch.Tensor:
        """One class's joint ``(V, V)`` (``label`` None: the unconditional one)."""
        return self.tables[self._rows(label)[0]]

    def marginals(self, label=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``P1 (V,)``, ``P2 (V,)`` of one class."""
        p = self.table(label)
        return p.sum(1), p.sum(0)

    def k_step_law(self, k: int, label=None) -> torch.Tensor:
        """The exact law of the ``k``-step ancestral sampler on the exact denoiser (DMMD.md §2).

        ``(1/k) P1 x P2 + (1 - 1/k) P``: with the linear schedule each token's reveal step is uniform
        on the ``k`` steps and independent of the other's; tokens revealed in the same step are drawn
        from their marginals independently (probability ``1/k``), otherwise the second is drawn from
        the exact conditional.
        """
        step_times(k)  # validates k
        p = self.table(label)
        p1, p2 = p.sum(1), p.sum(0)
        return torch.outer(p1, p2) / k + (1 - 1 / k) * p

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` token pairs ``(n, 2)`` and their labels (uniform over the classes unless given)."""
        if labels is None:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        y = self._rows(labels, n)
        cell = torch.empty(n, dtype=torch.long)
        for c in torch.unique(y).tolist():  # one multinomial per class: no (n, V * V) table
            rows = torch.nonzero(y == c)[:, 0]
            cell[rows] = torch.multinomial(self.tables[c].flatten(), len(rows), replacement=True, generator=generator)
        v = self.vocab_size
        return torch.stack([cell // v, cell % v], 1), y

    def denoiser_probs(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        """The exact ``E[x | z]`` per position, ``(B, 2, V)`` float64 (carry-over at visible positions)."""
        v = self.vocab_size
        z = check_tokens(z, v, allow_mask=True, name="z").cpu()
        if z.ndim != 2 or z.shape[1] != 2:
            raise ValueError(f"the two-token oracle takes z of shape (B, 2), got {tuple(z.shape)}")
        y = self._rows(labels, len(z))
        a, b = z[:, 0].clamp(max=v - 1), z[:, 1].clamp(max=v - 1)
        first = torch.where((z[:, 1] < v)[:, None], self.tables[y, :, b], self.tables.sum(2)[y])  # P(. | b) or P1
        second = torch.where((z[:, 0] < v)[:, None], self.tables[y, a, :], self.tables.sum(1)[y])  # P(. | a) or P2
        probs = torch.stack([first, second], 1)
        probs = probs / probs.sum(-1, keepdim=True)
        onehot = nn.functional.one_hot(z.clamp(max=v - 1), v).double()
        return torch.where((z < v)[..., None], onehot, probs)

    def to_points(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cell centres ``(B, 2)`` of token pairs, for scatter plots."""
        tokens = check_tokens(tokens, self.vocab_size)
        centres = (self.edges[1:] + self.edges[:-1]) / 2
        return centres[tokens.cpu()].float()

    def to_tokens(self, points: torch.Tensor) -> torch.Tensor:
        """Grid cells ``(B, 2)`` of points (outside the grid: the nearest edge cell)."""
        idx = torch.bucketize(points.double().contiguous(), self.edges[1:-1])
        return idx.long()


def discretise(gmm: GaussianMixture, vocab_size: int = 32, limit: float = 4.0, smoothing: float = 1e-3) -> TokenJoint:
    """A 2D Gaussian mixture on the ``V x V`` grid over ``[-limit, limit]^2`` (DMMD.md §4).

    Each mode's cell masses are exact (erf) and renormalised inside the box; the joint of class ``c``
    is ``(1 - smoothing) sum_k w_ck m_k u_k x v_k / Z_c + smoothing U x U`` with ``m_k`` the mode's
    mass inside the box. The uniform term is component ``J - 1``.
    """
    if gmm.dim != 2:
        raise ValueError(f"the two-token oracle discretises 2D mixtures, got {gmm.dim} dimensions")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if not 0 < smoothing < 1:
        raise ValueError(f"smoothing must be in (0, 1), got {smoothing}")
    edges = torch.linspace(-limit, limit, vocab_size + 1, dtype=torch.float64)
    first, second, inside = [], [], []
    for mean, std in zip(gmm.means, gmm.stds):
        mx, my = _cell_masses(mean[0], float(std), edges), _cell_masses(mean[1], float(std), edges)
        inside.append(mx.sum() * my.sum())
        first.append(mx / mx.sum())
        second.append(my / my.sum())
    uniform = torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
    first, second = torch.stack([*first, uniform]), torch.stack([*second, uniform])  # (K + 1, V)
    w = gmm.weights * torch.stack(inside)[None]  # (C, K)
    w = (1 - smoothing) * w / w.sum(1, keepdim=True)
    w = torch.cat([w, torch.full((len(w), 1), smoothing, dtype=torch.float64)], 1)  # (C, K + 1)
    w = torch.cat([w, (gmm.class_prior[:, None] * w).sum(0, keepdim=True)], 0)  # (C + 1, K + 1)
    return TokenJoint(w, first, second, edges)


@lru_cache(maxsize=4)
def ring_mix_tokens(vocab_size: int = 32) -> TokenJoint:
    """``ring-mix-tokens``: ``ring-mix`` (8 modes on a ring of radius 3, std 0.2) on a ``V x V`` grid, ``[-4, 4]^2``."""
    return discretise(ring_mix(), vocab_size)


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

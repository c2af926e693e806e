"""Datasets: registry, seeded sampling, exact mixture densities and oracle velocities, image splits."""

from __future__ import annotations

import math

import pytest
import torch

from pdmd_lab import flow
from pdmd_lab.data import DATASETS, GaussianMixture, ImageData, diffuse, get_dataset

TOY = ["ring-mix", "grid25", "grid-mix", "moons", "swiss-roll", "checkerboard"]
IMAGES = ["digits", "mnist"]
TOKENS = ["ring-mix-tokens", "mnist-binary"]
COUNTING = ["mnist-uncond", "motion-mix"]  # the counting benchmarks (pdmd_lab.uncond, pdmd_lab.motion)


def test_registry_names():
    assert list(DATASETS) == TOY + IMAGES + TOKENS + COUNTING
    for name, ds in DATASETS.items():
        assert ds.name == name and get_dataset(name) is ds
        assert ds.kind in ("2d", "image", "tokens", "trajectories") and ds.num_classes >= 1
        assert (ds.gmm is not None) == (name in ("ring-mix", "grid25", "grid-mix", "motion-mix"))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'nosuch'.*ring-mix"):
        get_dataset("nosuch")


@pytest.mark.parametrize("name", TOY + ["digits", "motion-mix"])
def test_seeded_sampling_reproducible(name):
    ds = get_dataset(name)
    x1, y1 = ds.sample(300, seed=3)
    x2, y2 = ds.sample(300, seed=3)
    x3, _ = ds.sample(300, seed=4)
    assert x1.shape == (300, *ds.shape) and y1.shape == (300,) and y1.dtype == torch.long
    assert x1.dtype == torch.float32 and torch.isfinite(x1).all()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert 0 <= y1.min() and y1.max() < ds.num_classes
    # A generator can be passed instead of a seed.
    x4, _ = ds.sample(300, seed=torch.Generator().manual_seed(3))
    assert torch.equal(x1, x4)


@pytest.mark.parametrize("name", ["ring-mix", "moons", "digits"])
def test_sampling_with_labels(name):
    ds = get_dataset(name)
    label = ds.num_classes - 1
    x, y = ds.sample(200, seed=0, labels=label)
    assert x.shape == (200, *ds.shape) and (y == label).all()
    with pytest.raises(ValueError, match="labels"):
        ds.sample(4, labels=ds.num_classes)
    with pytest.raises(ValueError, match="labels"):
        ds.sample(4, labels=-1)
    with pytest.raises(ValueError, match="n must be"):
        ds.sample(0)


def test_ring_mix_class_structure(ring_mix):
    gmm = ring_mix.gmm
    assert (gmm.num_classes, gmm.num_modes, gmm.dim) == (4, 8, 2)
    torch.testing.assert_close(gmm.weights.sum(1), torch.ones(4, dtype=torch.float64))
    x, y = ring_mix.sample(20_000, seed=0)
    modes = gmm.assign_modes(x, num_std=4.0)
    assert (modes >= 0).float().mean() > 0.999
    for c in range(4):
        mc = modes[(y == c) & (modes >= 0)]
        freq = torch.bincount(mc, minlength=8).double() / len(mc)
        torch.testing.assert_close(freq, gmm.weights[c], atol=0.025, rtol=0)
    assert (torch.bincount(y, minlength=4).double() / len(y) - 0.25).abs().max() < 0.02


# Exact densities ------------------------------------------------------------------------------------


def _log_prob_direct(gmm: GaussianMixture, x: torch.Tensor, weights: torch.Tensor, t: float) -> torch.Tensor:
    """sum_k w_k N(x; (1 - t) mu_k, ((1 - t)^2 s_k^2 + t^2) I), written out mode by mode."""
    x = x.double()
    total = torch.zeros(len(x), dtype=torch.float64)
    for k in range(gmm.num_modes):
        var = (1 - t) ** 2 * gmm.stds[k] ** 2 + t**2
        sq = ((x - (1 - t) * gmm.means[k]) ** 2).sum(1)
        total += weights[k] * torch.exp(-0.5 * sq / var) / (2 * math.pi * var) ** (gmm.dim / 2)
    return total.log()


@pytest.mark.parametrize("t", [0.0, 0.5])
def test_log_prob_matches_direct_and_integrates(ring_mix, t):
    gmm = ring_mix.gmm
    eps = torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
    x = flow.add_noise(ring_mix.sample(500, seed=1)[0], eps, t)
    for label in (0, 3, None, 4):
        w = gmm.mode_weights(None if label is None else torch.tensor([label]))[0]
        labels = None if label is None else torch.full((500,), label)
        torch.testing.assert_close(gmm.log_prob(x, labels, t=t).double(), _log_prob_direct(gmm, x, w, t),
                                   atol=1e-5, rtol=1e-5)
    # Riemann sum of the density over a grid covering the ring.
    h = 0.02
    g = torch.arange(-5, 5, h, dtype=torch.float64) + h / 2
    grid = torch.cartesian_prod(g, g)
    for labels in (None, torch.full((len(grid),), 2)):
        mass = gmm.log_prob(grid, labels, t=t).double().exp().sum() * h * h
        assert mass.item() == pytest.approx(1.0, abs=2e-3)


def test_unconditional_label_mixes_classes_by_prior():
    means = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    gmm = GaussianMixture(means, torch.tensor(0.3), weights, class_prior=torch.tensor([1.0, 3.0]))
    prior = torch.tensor([0.25, 0.75], dtype=torch.float64)
    uncond = prior @ gmm.weights
    torch.testing.assert_close(gmm.mode_weights(None)[0], uncond)
    torch.testing.assert_close(gmm.mode_weights(torch.tensor([2, 0, 2])),
                               torch.stack([uncond, gmm.weights[0], uncond]))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g) * 1.5
    null = torch.full((400,), 2)  # the unconditional label
    close = dict(atol=1e-5, rtol=1e-5)  # log_prob is float32
    for t in (0.0, 0.3, 0.7):
        # Unconditional density = prior-weighted class densities.
        lp_c = torch.stack([gmm.log_prob(x, torch.full((400,), c), t=t).double() for c in range(2)], 1)
        lp_u = torch.logsumexp(lp_c + prior.log(), 1)
        torch.testing.assert_close(gmm.log_prob(x, None, t=t).double(), lp_u, **close)
        torch.testing.assert_close(gmm.log_prob(x, null, t=t).double(), lp_u, **close)
        if t > 0:
            # Unconditional velocity = class velocities mixed by the class posterior p(c | x_t).
            post = torch.softmax(lp_c + prior.log(), 1)
            v_c = torch.stack([gmm.velocity(x.double(), t, torch.full((400,), c)) for c in range(2)], 1)
            v_u = (post[..., None] * v_c).sum(1)
            torch.testing.assert_close(gmm.velocity(x.double(), t), v_u, **close)
            torch.testing.assert_close(gmm.velocity(x.double(), t, null), v_u, **close)
    # Labels of unlabelled draws follow the prior.
    _, y = gmm.sample(40_000, seed=1)
    assert (y == 1).double().mean().item() == pytest.approx(0.75, abs=0.01)


# Oracle velocity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("label", [1, None])
def test_oracle_velocity_matches_monte_carlo(ring_mix, t, label):
    """v(x_t) = E[eps - x0 | x_t]: self-normalised importance sampling over x0 ~ data,
    weights N(x_t; (1 - t) x0, t^2 I), eps = (x_t - (1 - t) x0) / t."""
    gmm = ring_mix.gmm
    g = torch.Generator().manual_seed(5)
    n = 200_000
    x0, _ = gmm.sample(n, seed=g, labels=None if label is None else torch.tensor(label))
    x0 = x0.double()
    # Query points: noised data of the same class, plus the point halfway between two modes of class 1.
    q0, _ = gmm.sample(5, seed=g, labels=None if label is None else torch.tensor(label))
    queries = torch.cat([flow.add_noise(q0.double(), torch.randn(5, 2, generator=g, dtype=torch.float64), t),
                         (1 - t) * gmm.means[[2, 3]].mean(0, keepdim=True)])
    labels = None if label is None else torch.full((len(queries),), label)
    v_oracle = gmm.velocity(queries, t, labels)
    for q, v in zip(queries, v_oracle):
        logw = -0.5 * ((q - (1 - t) * x0) ** 2).sum(1) / t**2
        w = torch.softmax(logw, 0)
        ess = 1 / (w**2).sum()
        v_samples = (q - (1 - t) * x0) / t - x0
        v_mc = (w[:, None] * v_samples).sum(0)
        se = ((w[:, None] ** 2 * (v_samples - v_mc) ** 2).sum(0)).sqrt()
        assert ess > 200
        assert ((v_mc - v).abs() < 5 * se + 1e-3).all(), (q, v, v_mc, se)
        assert (v_mc - v).abs().max() < 0.1, (q, v, v_mc)


def test_oracle_velocity_limits(ring_mix):
    gmm = ring_mix.gmm
    x = torch.randn(64, 2, dtype=torch.float64)
    # At t = 1 the data carries no information: v = x_1 - E[x0].
    m0 = gmm.mode_weights(None)[0] @ gmm.means
    torch.testing.assert_close(gmm.velocity(x, 1.0), x - m0)
    # Per-sample times broadcast like a scalar time.
    t = torch.full((64,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(gmm.velocity(x, t), gmm.velocity(x, 0.4))


def test_assign_modes(ring_mix):
    gmm = ring_mix.gmm
    pts = torch.cat([gmm.means[[0, 5]], torch.zeros(1, 2, dtype=torch.float64)])
    assert gmm.assign_modes(pts).tolist() == [0, 5, -1]


def test_diffuse_is_seeded_add_noise(ring_mix):
    x0, _ = ring_mix.sample(100, seed=0)
    x1, x2 = diffuse(x0, 0.4, seed=9), diffuse(x0, 0.4, seed=9)
    assert torch.equal(x1, x2)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(x1, flow.add_noise(x0, eps, 0.4))


# Images ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,size,heldout", [("digits", 8, 297), ("mnist", 28, 500)])
def test_images_range_shapes_and_split(name, size, heldout):
    ds = get_dataset(name)
    assert ds.kind == "image" and ds.shape == (1, size, size) and ds.num_classes == 10
    x, y = ds.sample(64, seed=0)
    assert x.shape == (64, 1, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.99
    assert 0 <= y.min() and y.max() <= 9

    (xtr, ytr), (xho, yho) = ds._sampler.train(), ds._sampler.heldout()
    assert len(xho) == heldout and len(yho) == heldout and len(xtr) == len(ytr)
    assert set(ytr.tolist()) == set(range(10)) and set(yho.tolist()) == set(range(10))
    # Disjoint: no held-out image appears in the training part, and together they are the whole set.
    flat_tr, flat_ho = xtr.flatten(1), xho.flatten(1)
    both = torch.cat([flat_tr, flat_ho])
    assert len(torch.unique(both, dim=0)) == len(both)
    assert len(both) == {"digits": 1797, "mnist": 5000}[name]
    if name == "digits":  # (reloading MNIST costs seconds; the split code is shared)
        # Fixed: a fresh split of the same images is the same split.
        loaded = ds._sampler._loader()
        again = ImageData(lambda: loaded, heldout=heldout)
        assert torch.equal(again.heldout()[0], xho) and torch.equal(again.train()[1], ytr)
    # Samples come from the training part only.
    xs, _ = ds.sample(200, seed=1)
    rows = {r.numpy().tobytes() for r in flat_tr}
    assert all(r.numpy().tobytes() in rows for r in xs.flatten(1))

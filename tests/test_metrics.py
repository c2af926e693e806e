"""Metrics against closed forms, hand-computed cases, and a mode-collapse case on ring-mix."""

import math

import numpy as np
import pytest
import torch

from pdmd_lab import metrics
from pdmd_lab.data import get_dataset


def _gauss(n, d, seed, mean=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + mean


def _with_moments(z: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Recolour samples so that their sample mean and (N - 1) covariance are exactly ``mu`` and ``cov``."""
    z = z - z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mu


# Energy distance and MMD ----------------------------------------------------------------------

def test_energy_distance_hand_case():
    # cross |a - b|: 5, 7, 3, 5 -> mean 5; within a and within b (i != j): 2 each -> 2 * 5 - 2 - 2
    a, b = np.array([[0.0], [2.0]]), np.array([[5.0], [7.0]])
    assert metrics.energy_distance(a, b) == pytest.approx(6.0)
    # U-statistic: the within-set means skip i == j, so even a set against itself is not 0 (2 * 1 - 2 - 2)
    assert metrics.energy_distance(a, a) == pytest.approx(-2.0)


def test_energy_distance_gaussians_closed_form():
    # 1D N(0, 1) vs N(m, 1): X - Y ~ N(-m, 2) and
    # E|N(m, s^2)| = s sqrt(2/pi) exp(-m^2 / 2s^2) + m erf(m / (s sqrt 2)); E|X - X'| = 2 / sqrt(pi)
    m, s = 1.0, math.sqrt(2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * math.erf(m / (s * math.sqrt(2)))
    exact = 2 * e_xy - 2 * 2 / math.sqrt(math.pi)
    a, b = _gauss(3000, 1, 0), _gauss(3000, 1, 1, mean=m)
    assert metrics.energy_distance(a, b) == pytest.approx(exact, abs=0.02)
    assert abs(metrics.energy_distance(a, _gauss(3000, 1, 2))) < 0.01  # unbiased: around 0


def test_mmd2_rbf_hand_case_and_median_heuristic():
    a, b = np.array([[0.0], [1.0]]), np.array([[0.0], [3.0]])
    k = lambda d: math.exp(-(d**2) / 2)  # noqa: E731, h = 1
    cross = (k(0) + k(3) + k(1) + k(2)) / 4
    assert metrics.mmd2_rbf(a, b, bandwidth=1.0) == pytest.approx(k(1) + k(3) - 2 * cross)
    # pooled points 0, 1, 0, 3: non-zero distances 1, 3, 1, 3, 2 -> median 2
    assert metrics.mmd2_rbf(a, b) == pytest.approx(metrics.mmd2_rbf(a, b, bandwidth=2.0))


def test_mmd2_rbf_same_vs_shifted():
    a = _gauss(1000, 2, 0)
    same = metrics.mmd2_rbf(a, _gauss(1000, 2, 1))
    shifted = metrics.mmd2_rbf(a, _gauss(1000, 2, 2, mean=1.0))
    assert abs(same) < 0.005 and shifted > 0.1


# Frechet distance ------------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.gaussian_frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # 2D, non-commuting covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for a 2x2 PSD M,
    # and M = S_a^1/2 S_b S_a^1/2 has tr M = tr(S_a S_b), det M = det S_a det S_b.
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    cov_a, cov_b = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    tr_sqrt = math.sqrt(np.trace(cov_a @ cov_b) + 2 * math.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b)))
    exact = 8.0 + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt
    assert metrics.gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(exact, rel=1e-10)
    # on features whose sample moments are exactly those
    rng = np.random.default_rng(0)
    fa = _with_moments(rng.normal(size=(200, 2)), mu_a, cov_a)
    fb = _with_moments(rng.normal(size=(300, 2)), mu_b, cov_b)
    assert metrics.frechet_distance(fa, torch.tensor(fb)) == pytest.approx(exact, rel=1e-8)
    assert metrics.frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-8)


# PRDC ------------------------------------------------------------------------------------------

def test_prdc_hand_case():
    # k = 1: real radii all 1; fake radii both 9.5 (distance between the two fakes).
    # precision: 0.5 is in B(0, 1), 10 is in no real ball -> 1/2;
    # recall: B(0.5, 9.5) holds every real -> 1;
    # density: 0.5 lies in B(0, 1) and B(1, 1) -> (2 + 0) / (1 * 2) = 1;
    # coverage: only B(0, 1) and B(1, 1) hold a fake -> 1/2.
    real, fake = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [10.0]])
    got = metrics.prdc(real, fake, k=1)
    assert got == pytest.approx({"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5})


def test_prdc_identical_sets():
    x = _gauss(300, 3, 0)
    got = metrics.prdc(x, x.clone(), k=5)
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0
    assert got["density"] == pytest.approx(1.0, abs=0.02)


# Diversity -------------------------------------------------------------------------------------

def test_vendi_identical_and_orthogonal():
    same = np.tile([[1.0, 2.0, 3.0]], (7, 1))
    assert metrics.vendi_score(same) == pytest.approx(1.0)
    assert metrics.vendi_score(same, kernel="rbf") == pytest.approx(1.0)
    assert metrics.vendi_score(np.eye(6)) == pytest.approx(6.0)
    # n > D (the D x D Gram path): e1, e1, e2, e3 -> eigenvalues 1/2, 1/4, 1/4 -> exp(1.5 log 2)
    assert metrics.vendi_score(np.eye(3)[[0, 0, 1, 2]]) == pytest.approx(2**1.5)
    far = 100.0 * np.arange(5.0)[:, None]
    assert metrics.vendi_score(far, kernel="rbf", bandwidth=1.0) == pytest.approx(5.0)


def test_pairwise_diversity_hand_cases():
    # cosines: (1,0)(0,1) = 0, (1,0)(1,1) = (0,1)(1,1) = 1/sqrt 2
    cos = metrics.pairwise_cosine_similarity([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert cos == pytest.approx(math.sqrt(2) / 3)
    assert metrics.pairwise_distance([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]) == pytest.approx((5 + 3 + 4) / 3)


def test_per_class_and_class_accuracy():
    x = torch.tensor([[0.0], [2.0], [10.0], [13.0], [16.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    assert metrics.per_class(metrics.pairwise_distance, x, y) == pytest.approx({0: 2.0, 1: 4.0})
    assert metrics.class_accuracy(torch.tensor([0, 1, 1, 1]), np.array([0, 1, 0, 1])) == 0.75


# Gaussian-mixture modes ------------------------------------------------------------------------

def test_mode_histogram_and_kl_hand_case():
    gmm = get_dataset("ring-mix").gmm
    means = gmm.means.float()
    x = torch.cat([means[[0, 0, 1]], means[[5]], torch.zeros(1, 2)])  # the origin is near no mode
    y = torch.tensor([0, 0, 0, 1, 1])
    hist = metrics.mode_histogram(gmm, x, y)
    assert hist.shape == (4, 8)
    assert hist[0, :2] == pytest.approx([2 / 3, 1 / 3]) and hist[1, 5] == 0.5 and hist[1].sum() == 0.5
    assert hist[2:].sum() == 0
    cov = metrics.mode_coverage(gmm, x, y, min_share=0.3)
    c0 = cov["per_class"][0]
    assert (c0["modes_expected"], c0["modes_covered"], c0["high_quality"]) == (3, 2, 1.0)
    assert cov["per_class"][1]["high_quality"] == 0.5 and set(cov["per_class"]) == {0, 1}
    assert cov["modes_covered"] == 2 and cov["modes_expected"] == 6 and cov["high_quality"] == 0.8
    # a histogram equal to its reference has KL 0; the measured one as the reference gives 0 too
    exact = torch.cat([means[[0] * 5 + [1] * 3 + [2] * 2]])
    assert metrics.mode_coverage(gmm, exact, torch.zeros(10))["kl"] == pytest.approx(0.0, abs=1e-12)
    assert metrics.mode_coverage(gmm, x, y, reference_weights=hist)["kl"] == pytest.approx(0.0, abs=1e-12)


def _collapsed(gmm, labels, seed):
    """Every sample of class c drawn around its heaviest mode only (mode collapse)."""
    heavy = gmm.weights.argmax(1)[labels]
    noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (gmm.means[heavy] + gmm.stds[heavy, None] * noise).float()


def test_collapse_scores_worse_on_ring_mix():
    gmm = get_dataset("ring-mix").gmm
    labels = torch.arange(4).repeat_interleave(250)
    real, _ = gmm.sample(1000, seed=0, labels=labels)
    fresh, _ = gmm.sample(1000, seed=1, labels=labels)
    collapsed = _collapsed(gmm, labels, seed=2)

    good, bad = metrics.mode_coverage(gmm, fresh, labels), metrics.mode_coverage(gmm, collapsed, labels)
    assert good["coverage"] == 1.0 and good["modes_expected"] == 12 and good["high_quality"] > 0.97
    assert bad["modes_covered"] == 4 and bad["high_quality"] > 0.97
    assert good["kl"] < 0.02 and bad["kl"] > 0.5  # KL(one mode || 0.5/0.3/0.2) = log 2

    # recall: 70% of each class's mass sits on the modes the collapsed set keeps
    assert metrics.prdc(real, fresh)["recall"] > 0.9 and metrics.prdc(real, collapsed)["recall"] < 0.8
    vendi = lambda x: metrics.vendi_score(x[::3], kernel="rbf", bandwidth=0.5)  # noqa: E731, fixed kernel
    assert vendi(collapsed) < 0.7 * vendi(fresh)
    for c in range(4):  # energy distance per class: fresh samples sit at the estimator's floor
        m = labels == c
        floor = metrics.energy_distance(real[m], fresh[m])
        assert abs(floor) < 0.03 and metrics.energy_distance(real[m], collapsed[m]) > 0.5


# Bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: metrics.energy_distance(np.zeros((0, 2)), np.zeros((3, 2))), "empty"),
    (lambda: metrics.energy_distance(np.zeros((3, 2)), np.zeros((3, 3))), "feature dimensions differ"),
    (lambda: metrics.mmd2_rbf(np.zeros((1, 2)), np.zeros((3, 2))), "at least 2"),
    (lambda: metrics.mmd2_rbf(np.zeros((3, 2)), np.zeros((3, 2)), bandwidth=0.0), "bandwidth"),
    (lambda: metrics.frechet_distance(np.zeros((3, 1, 4, 4)), np.zeros((3, 16))), "shape \\(N, D\\)"),
    (lambda: metrics.prdc(np.zeros((5, 2)), np.ones((9, 2)), k=5), "real needs at least 6"),
    (lambda: metrics.prdc(np.zeros((9, 2)), np.ones((9, 2)), k=0), "k must be"),
    (lambda: metrics.vendi_score(np.ones((3, 2)), kernel="linear"), "unknown kernel"),
    (lambda: metrics.pairwise_cosine_similarity(np.zeros((3, 2))), "all-zero"),
    (lambda: metrics.pairwise_distance([[np.nan, 0.0], [1.0, 1.0]]), "NaN"),
    (lambda: metrics.class_accuracy([0, 1], [0, 1, 1]), "shape"),
    (lambda: metrics.mode_coverage(get_dataset("ring-mix").gmm, np.zeros((2, 2)), [0, 4]), "labels must lie"),
    (lambda: metrics.mode_coverage(get_dataset("ring-mix").gmm, np.zeros((2, 3)), [0, 1]), "dimensions"),
    (lambda: metrics.mode_coverage(get_dataset("ring-mix").gmm, np.zeros((2, 2)), [0, 1],
                                   reference_weights=np.ones((4, 7))), "reference_weights must have shape"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()

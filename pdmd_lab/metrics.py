"""Sample-quality and diversity metrics on feature sets.

Every metric takes features of shape ``(N, D)``, as torch tensors or numpy arrays (flatten images,
or better embed them with :func:`pdmd_lab.embed.embed`, first) and returns plain Python floats.
Bad input (empty sets, 1-d or 4-d arrays, mismatched feature dimensions, too few samples for the
estimator) raises ``ValueError`` with a one-line message. Everything is computed in float64.

* two-set distances: :func:`energy_distance`, :func:`mmd2_rbf`, :func:`frechet_distance`;
* fidelity and diversity against a reference set: :func:`prdc`;
* diversity of one set: :func:`vendi_score`, :func:`pairwise_cosine_similarity`, :func:`pairwise_distance`;
* Gaussian mixtures with known modes: :func:`mode_histogram`, :func:`mode_coverage`;
* labels: :func:`class_accuracy`, :func:`per_class`.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 2048  # rows per block of a pairwise-distance matrix (bounds memory to _CHUNK x N doubles)


def _tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _features(x, name: str, min_n: int = 1) -> torch.Tensor:
    """``x`` as a float64 CPU tensor of shape (N, D), checked."""
    t = _tensor(x, torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(t.shape)}; flatten or embed images")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if t.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _feature_pair(a, b, names=("a", "b"), min_n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _features(a, names[0], min_n), _features(b, names[1], min_n)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {names[0]} has {a.shape[1]}, "
                         f"{names[1]} has {b.shape[1]}")
    return a, b


def _labels(labels, n: int, name: str = "labels") -> torch.Tensor:
    y = _tensor(labels, torch.long)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the samples, got {tuple(y.shape)}")
    return y


def _block_sums(a: torch.Tensor, b: torch.Tensor, fn, same: bool) -> float:
    """``sum_ij fn(|a_i - b_j|^2)`` over all pairs (over ``i != j`` when ``same``), in blocks of rows."""
    total = 0.0
    for start in range(0, len(a), _CHUNK):
        d2 = torch.cdist(a[start:start + _CHUNK], b).square_()  # (chunk, M)
        vals = fn(d2)
        if same:
            idx = torch.arange(vals.shape[0])
            vals[idx, start + idx] = 0.0
        total += float(vals.sum())
    return total


def _mean_pair(a: torch.Tensor, b: torch.Tensor | None, fn) -> float:
    """Mean of ``fn(squared distance)`` over all pairs of ``a x b``, or over ``i != j`` in ``a`` (b None)."""
    if b is None:
        n = len(a)
        return _block_sums(a, a, fn, same=True) / (n * (n - 1))
    return _block_sums(a, b, fn, same=False) / (len(a) * len(b))


def _median_distance(x: torch.Tensor, max_points: int = 1000) -> float:
    """Median of the non-zero pairwise distances of (at most ``max_points`` seeded-random rows of) ``x``.

    Returns 1 when all points coincide (every bandwidth then gives the same all-ones kernel).
    """
    if len(x) > max_points:
        g = torch.Generator().manual_seed(0)
        x = x[torch.randperm(len(x), generator=g)[:max_points]]
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    d = torch.cdist(x, x)[i, j]
    d = d[d > 0]
    return float(d.median()) if len(d) else 1.0


def _rbf(bandwidth: float):
    return lambda d2: torch.exp(-d2 / (2 * bandwidth**2))


def _check_bandwidth(bandwidth) -> None:
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0 or None (median heuristic), got {bandwidth}")


# Two-set distances ---------------------------------------------------------------------------

def energy_distance(a, b) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo 2013, Energy statistics).

    U-statistic: the within-set means run over pairs ``i != j``, so the estimate is unbiased and
    scatters around 0 (it can be slightly negative) when both sets come from one distribution; a
    set against itself gives ``-2 E|X - X'| / n``, not 0. Needs at least 2 samples per set.
    """
    a, b = _feature_pair(a, b, min_n=2)
    dist = torch.sqrt
    return 2 * _mean_pair(a, b, dist) - _mean_pair(a, None, dist) - _mean_pair(b, None, dist)


def mmd2_rbf(a, b, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with the RBF kernel ``exp(-|x - y|^2 / (2 h^2))`` (Gretton et al. 2012, Eq. 3).

    ``bandwidth`` is ``h``; None takes the median non-zero pairwise distance of the pooled samples
    (the median heuristic, on at most 1,000 seeded-random points). Same distribution: scatters around 0.
    """
    a, b = _feature_pair(a, b, min_n=2)
    _check_bandwidth(bandwidth)
    h = _median_distance(torch.cat([a, b])) if bandwidth is None else float(bandwidth)
    k = _rbf(h)
    return _mean_pair(a, None, k) + _mean_pair(b, None, k) - 2 * _mean_pair(a, b, k)


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet (2-Wasserstein squared) distance between two Gaussians (Dowson & Landau 1982).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``, the formula of FID
    (Heusel et al. 2017). The matrix square roots go through symmetric eigendecompositions, so the
    trace term is real and stable for singular covariances.
    """
    mu_a, mu_b = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (mu_a, mu_b))
    cov_a, cov_b = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov_a, cov_b))
    d = len(mu_a)
    if len(mu_b) != d or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"Gaussian statistics do not match: means {len(mu_a)}, {len(mu_b)}, "
                         f"covariances {cov_a.shape}, {cov_b.shape}")
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # (D, D)
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def frechet_distance(feat_a, feat_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID on given features).

    Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule; sample covariances use
    ``N - 1``. Needs at least 2 samples per set.
    """
    a, b = _feature_pair(feat_a, feat_b, ("feat_a", "feat_b"), min_n=2)
    a, b = a.numpy(), b.numpy()
    cov = lambda x: np.atleast_2d(np.cov(x, rowvar=False))  # noqa: E731
    return gaussian_frechet_distance(a.mean(0), cov(a), b.mean(0), cov(b))


# Fidelity and diversity against a reference set ----------------------------------------------

def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage with k-nearest-neighbour balls.

    Naeem et al. 2020, Reliable Fidelity and Diversity Metrics for Generative Models (their
    reference code, strict ``<`` comparisons). ``r_i`` is the distance from real sample ``i`` to its
    k-th nearest other real sample (``r'_j`` likewise for fake samples):

    * precision: share of fake samples inside some real ball ``B(x_i, r_i)``;
    * recall: share of real samples inside some fake ball ``B(y_j, r'_j)``;
    * density: ``1/(k M) sum_j #{i : y_j in B(x_i, r_i)}`` (about 1 for matching distributions);
    * coverage: share of real balls that hold at least one fake sample.

    Needs at least ``k + 1`` samples in each set.
    """
    from sklearn.neighbors import NearestNeighbors

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real, fake = _feature_pair(real, fake, ("real", "fake"), min_n=k + 1)
    real, fake = real.numpy(), fake.numpy()
    nn_real = NearestNeighbors().fit(real)
    nn_fake = NearestNeighbors().fit(fake)
    r_real = nn_real.kneighbors(real, k + 1)[0][:, k]  # (N,), column 0 is the point itself
    r_fake = nn_fake.kneighbors(fake, k + 1)[0][:, k]  # (M,)

    def inside(nn, radii, queries) -> np.ndarray:
        """For each query, how many index balls ``B(p, radii[p])`` hold it (strictly)."""
        dist, idx = nn.radius_neighbors(queries, radius=radii.max())
        return np.array([(d < radii[i]).sum() for d, i in zip(dist, idx)])

    in_real_balls = inside(nn_real, r_real, fake)  # (M,)
    nearest_fake = nn_fake.kneighbors(real, 1)[0][:, 0]  # (N,)
    return {
        "precision": float((in_real_balls > 0).mean()),
        "recall": float((inside(nn_fake, r_fake, real) > 0).mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float((nearest_fake < r_real).mean()),
    }


# Diversity of one set ------------------------------------------------------------------------

VENDI_KERNELS = ("cosine", "rbf")


def vendi_score(features, kernel: str = "cosine", bandwidth: float | None = None) -> float:
    """Vendi score ``exp(-sum_i l_i log l_i)``, ``l_i`` the eigenvalues of ``K / n``.

    Friedman & Dieng 2023, The Vendi Score: A Diversity Evaluation Metric for Machine Learning.
    It is 1 for identical samples and ``n`` for mutually dissimilar ones (``K = I``).

    ``kernel``: ``"cosine"`` (``K_ij = cos(x_i, x_j)``; for embeddings, poor for raw 2D points near
    the origin) or ``"rbf"`` (``exp(-|x_i - x_j|^2 / (2 h^2))``, ``h = bandwidth``; None takes the
    median non-zero pairwise distance, which adapts to each set: pass a fixed ``bandwidth`` to
    compare sets).
    The cosine score works on the ``D x D`` Gram matrix when ``D < n``; the RBF one
    eigendecomposes ``n x n`` (keep ``n`` to a few thousand).
    """
    if kernel not in VENDI_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of: {', '.join(VENDI_KERNELS)}")
    x = _features(features, "features")
    _check_bandwidth(bandwidth)
    n = len(x)
    if kernel == "cosine":
        u = _unit_rows(x)
        gram = u.T @ u if u.shape[1] < n else u @ u.T  # same non-zero eigenvalues
    else:
        h = _median_distance(x) if bandwidth is None else float(bandwidth)
        gram = _rbf(h)(torch.cdist(x, x).square_())  # (n, n)
    lam = torch.linalg.eigvalsh(gram / n).clamp_min(0)
    lam = lam[lam > 0]
    return float(torch.exp(-(lam * torch.log(lam)).sum()))


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("cosine similarity is undefined for all-zero feature vectors")
    return x / norms


def pairwise_cosine_similarity(features) -> float:
    """Mean cosine similarity over pairs ``i != j`` (lower is more diverse); needs 2 samples."""
    u = _unit_rows(_features(features, "features", min_n=2))
    n = len(u)
    total = float(u.sum(0).square().sum()) - n  # sum_ij u_i . u_j minus the diagonal (each 1)
    return total / (n * (n - 1))


def pairwise_distance(features) -> float:
    """Mean Euclidean distance over pairs ``i != j`` (higher is more diverse); needs 2 samples."""
    return _mean_pair(_features(features, "features", min_n=2), None, torch.sqrt)


# Labels --------------------------------------------------------------------------------------

def per_class(fn, features, labels, **kwargs) -> dict[int, float]:
    """``{class: fn(features of that class, **kwargs)}`` for each class present in ``labels``."""
    x = _features(features, "features")
    y = _labels(labels, len(x))
    return {int(c): fn(x[y == c], **kwargs) for c in torch.unique(y)}


def class_accuracy(pred_labels, labels) -> float:
    """Share of predictions equal to the labels."""
    y = _labels(labels, len(labels))
    if len(y) == 0:
        raise ValueError("labels is empty")
    pred = _labels(pred_labels, len(y), "pred_labels")
    return float((pred == y).double().mean())


# Gaussian-mixture modes ----------------------------------------------------------------------

def _mode_counts(gmm, x, labels, num_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts ``(C, K)`` of samples per class and assigned mode, and class sizes ``(C,)``."""
    x = _features(x, "x")
    if x.shape[1] != gmm.dim:
        raise ValueError(f"x has {x.shape[1]} features but the mixture lives in {gmm.dim} dimensions")
    y = _labels(labels, len(x))
    c, k = gmm.num_classes, gmm.num_modes
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}], got values in [{int(y.min())}, {int(y.max())}]")
    if not num_std > 0:
        raise ValueError(f"num_std must be > 0, got {num_std}")
    modes = gmm.assign_modes(x, num_std=num_std)  # (N,), -1 outside every mode
    hit = modes >= 0
    counts = torch.zeros(c * k, dtype=torch.float64)
    counts.index_add_(0, y[hit] * k + modes[hit], torch.ones(int(hit.sum()), dtype=torch.float64))
    sizes = torch.bincount(y, minlength=c).double()
    return counts.reshape(c, k), sizes


def mode_histogram(gmm, x, labels, num_std: float = 3.0) -> np.ndarray:
    """Shares ``(C, K)``: ``[c, k]`` is the share of class-``c`` samples within ``num_std`` stds of mode k.

    Rows sum to the class's share of samples near some mode (its ``high_quality``); classes without
    samples get zero rows. Measured on teacher samples, it is the reference that
    :func:`mode_coverage` needs when CFG > 1 moves mass between modes.
    """
    counts, sizes = _mode_counts(gmm, x, labels, num_std)
    return (counts / sizes.clamp_min(1)[:, None]).numpy()


def mode_coverage(gmm, x, labels, min_share: float = 0.02, num_std: float = 3.0,
                  reference_weights=None, *, smoothing: float = 1e-3) -> dict:
    """Mode coverage of class-conditional samples from a Gaussian mixture (``pdmd_lab.data.GaussianMixture``).

    In the spirit of the mode counts of Srivastava et al. 2017 (VEEGAN) on ring / grid mixtures,
    per class ``c`` present in ``labels``:

    * ``modes_expected``: modes with weight > 0 in class ``c`` (``gmm.weights``);
    * ``modes_covered``: expected modes holding >= ``min_share`` of the class's samples within
      ``num_std`` stds;
    * ``high_quality``: share of the class's samples within ``num_std`` stds of any mode;
    * ``kl``: ``KL(p || q)`` with ``p`` the class's mode histogram (samples near a mode only) and
      ``q`` the reference row (``gmm.weights`` by default, or ``reference_weights`` ``(C, K)``, e.g.
      :func:`mode_histogram` of teacher samples); both rows get ``smoothing`` added to every mode and
      are renormalised, so modes the reference lacks cost a finite, large amount.

    Returns ``{"per_class": {c: {...}}, "modes_covered", "modes_expected", "coverage"
    (covered / expected), "high_quality" (over all samples), "kl" (mean over classes)}``.
    """
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    counts, sizes = _mode_counts(gmm, x, labels, num_std)
    c, k = counts.shape
    if reference_weights is None:
        ref = gmm.weights.double()
    else:
        ref = torch.as_tensor(np.asarray(reference_weights), dtype=torch.float64)
        if ref.shape != (c, k):
            raise ValueError(f"reference_weights must have shape ({c}, {k}), got {tuple(ref.shape)}")
        if (ref < 0).any() or not torch.isfinite(ref).all():
            raise ValueError("reference_weights must be finite and >= 0")

    def normalise(h: torch.Tensor) -> torch.Tensor:
        h = h / h.sum() if h.sum() > 0 else h
        return (h + smoothing) / (h + smoothing).sum()

    per_class = {}
    for cls in torch.nonzero(sizes > 0)[:, 0].tolist():
        expected = gmm.weights[cls] > 0  # (K,)
        share = counts[cls] / sizes[cls]  # (K,)
        p, q = normalise(counts[cls]), normalise(ref[cls])
        per_class[cls] = {
            "modes_expected": int(expected.sum()),
            "modes_covered": int((expected & (share >= min_share)).sum()),
            "high_quality": float(share.sum()),
            "kl": float((p * torch.log(p / q)).sum()),
        }
    covered = sum(v["modes_covered"] for v in per_class.values())
    expected = sum(v["modes_expected"] for v in per_class.values())
    return {
        "per_class": per_class,
        "modes_covered": covered,
        "modes_expected": expected,
        "coverage": covered / expected,
        "high_quality": float(counts.sum() / sizes.sum()),
        "kl": float(np.mean([v["kl"] for v in per_class.values()])),
    }


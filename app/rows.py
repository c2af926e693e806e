"""A model's samples with its rows split over threads, and the keys they are cached under.

Nothing here imports Gradio: the app's first draw (:mod:`app.early`, a process of its own started before
Gradio loads) uses it too.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from app.early import DEFAULT_FAMILY, Count  # noqa: F401  (the page's first family; a model's steps drawn)

MAX_SAMPLES = 64
MAX_PAIR_SAMPLES = 8192  # points and token pairs: a scatter or a joint histogram on 32 x 32 cells needs thousands
DEFAULT_PAIR_SAMPLES = 2048
MAX_WORKERS = 4  # threads a model's rows are split over (one per free core, each running one torch thread)
MIN_CHUNK = 8  # rows per thread at least: smaller batches are not worth a thread (8 MNIST rows are: 10.2 s -> 7.9 s)


def default_family(families) -> str | None:
    """The family a page or tab opens on: :data:`DEFAULT_FAMILY` when among ``families``, else the first, or None."""
    families = list(families)
    return DEFAULT_FAMILY if DEFAULT_FAMILY in families else next(iter(families), None)


def sample_limits(family: str) -> tuple[int, int]:
    """``(most, default)`` number of samples in Compare: samples of a few numbers each (2D points, token
    pairs) are shown as a distribution (a scatter of thousands, a joint histogram); larger ones (images)
    as a grid of at most 64 (all 64 by default for unconditional datasets, whose panels count digits)."""
    from pdmd_lab.data import get_dataset
    from pdmd_lab.families import get_family

    if math.prod(get_dataset(family).shape) <= 4:
        return MAX_PAIR_SAMPLES, DEFAULT_PAIR_SAMPLES
    if get_family(family).is_unconditional(family):  # a histogram of what was drawn needs more than 16
        return MAX_SAMPLES, MAX_SAMPLES
    return MAX_SAMPLES, 16


def noise(seed: int, n: int, shape) -> torch.Tensor:
    """The seeded Gaussian noise of ``n`` samples: row ``i`` is the same whatever ``n`` is."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def labels_all(n: int, num_classes: int) -> torch.Tensor:
    """Class labels of the class choice ``all``: ``0, 1, ..., num_classes - 1, 0, 1, ...`` (row ``i`` the same
    whatever ``n`` is, like the noise)."""
    return torch.arange(n) % num_classes


def workers() -> int:
    """Threads to split a model's rows over: the usable cores, each thread running ``torch.get_num_threads()``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // max(1, torch.get_num_threads())))


def split_sample(model, labels: torch.Tensor, noise: torch.Tensor, seed: int, count: Count):
    """``(samples, ms)``: a deterministic (Euler) model's samples, rows split in chunks over :func:`workers`
    threads (each row depends on its own noise and label only); ``ms`` sums the chunks' times, so it stays
    comparable with one batch drawn on one core."""
    n = len(labels)
    w = max(1, min(workers(), n // MIN_CHUNK))
    parts = max(w, min(2 * w, n // MIN_CHUNK))  # two chunks a thread where rows allow: a slowed core holds up less
    edges = [round(i * n / parts) for i in range(parts + 1)]

    def chunk(i):
        a, b = edges[i], edges[i + 1]
        t0 = time.perf_counter()
        x = model.sample(labels[a:b], seed=seed, noise=noise[a:b], callback=lambda d: count.add(b - a))
        return x, 1000 * (time.perf_counter() - t0)

    if parts == 1:
        return chunk(0)
    with ThreadPoolExecutor(w, thread_name_prefix="model-rows") as pool:
        done = list(pool.map(chunk, range(parts)))
    return torch.cat([x for x, _ in done]), sum(ms for _, ms in done)


# Cache keys ----------------------------------------------------------------------------------------

def class_key(class_choice) -> str:
    return "all" if class_choice in (None, "", "all") else str(int(float(class_choice)))


def cache_key(family: str, key: str, class_choice, seed: int, n: int, cfg: float) -> tuple:
    """The key of a model's samples for a request in the app's cache (Compare's and Diversity's)."""
    return family, key, class_key(class_choice), int(seed), int(n), round(float(cfg), 6)

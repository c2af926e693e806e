"""Shared test setup: quiet, single-threaded, seeded CPU runs.

``PDMD_TEST_THREADS`` sets torch's intra-op threads (default 1: the networks here are small, and
on a shared or busy machine several threads spin against each other and run many times slower).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PDMD_TEST_THREADS", "1")))


def _energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic: >= 0, ~ 2 E|X - X'| / n
    for two samples of size n from one distribution), so a data-vs-data value is a positive baseline."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@pytest.fixture(scope="session")
def energy_distance():
    """The energy distance between two point sets, as a function (kept here, independent of metrics.py)."""
    return _energy_distance


@pytest.fixture(scope="session")
def ring_mix():
    """The ``ring-mix`` dataset (8 modes, 4 classes, exact density and oracle velocity)."""
    from pdmd_lab.data import get_dataset

    return get_dataset("ring-mix")


@pytest.fixture(scope="session")
def mixture_1d():
    """A 1D mixture with modes at -1, 0, 1, 2 (std 0.1), one class: the paper's Fig. 2 setting."""
    from pdmd_lab.data import GaussianMixture

    return GaussianMixture(torch.tensor([[-1.0], [0.0], [1.0], [2.0]]), torch.tensor(0.1), torch.ones(1, 4))


# The longest files first: under `pytest -n 2 --dist loadfile` (make test) each file runs whole in one worker,
# so a long file started last would leave the other worker idle at the end.
LONG_FIRST = ("test_notebooks.py", "test_engine.py", "test_app_browser.py", "test_backbones.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: order within a file kept

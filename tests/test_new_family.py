"""A new kind of data from outside the package, in this file only: 1-D signals drawn as line plots.

The family ``signals`` and its one dataset ``sine-mix`` (a Gaussian mixture of sine waves in R^16, so
its exact velocity is known) are defined and registered here; nothing in ``pdmd_lab`` names them. The
kit then lists the dataset's oracle teacher, samples and draws it, evaluates it, and distills it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from matplotlib.figure import Figure

from pdmd_lab import metrics
from pdmd_lab.data import DATASETS, Dataset, GaussianMixture, register_dataset
from pdmd_lab.families import FAMILIES, Metric, get_family, register_family
from pdmd_lab.families.continuous import ContinuousFamily, mean_per_class

LENGTH = 16


def sine_mix() -> GaussianMixture:
    """Four modes, sines of 1 and 2 periods at phases 0 and pi; class 0 holds the 1-period ones, class 1 the
    2-period ones, with unequal weights (so CFG changes the distribution)."""
    s = torch.arange(LENGTH, dtype=torch.float64) / LENGTH
    means = torch.stack([torch.sin(2 * math.pi * f * s + p) for f in (1, 2) for p in (0.0, math.pi)])
    weights = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor(0.1), weights)


class SignalsFamily(ContinuousFamily):
    name = "signals"
    description = "1-D signals of fixed length, drawn as line plots"
    metrics = (
        Metric("nfe", "NFE"),
        Metric("modes", "modes covered", False, "modes holding >= 2% of a class's samples"),
        Metric("energy_distance", "energy dist.", True, "energy distance to the reference set"),
        Metric("recall", "recall", False, "PRDC recall (k = 5)"),
        Metric("pairwise_distance", "pairwise dist.", False, "mean pairwise distance within a class"),
    )

    def diversity_of(self, dataset, feats, labels):
        return {"pairwise_distance": mean_per_class(metrics.pairwise_distance, feats, labels)}

    def fidelity(self, dataset, x, feats, labels, ref_x, ref_feats, *, classifier=None, reference_state=None):
        cov = metrics.mode_coverage(self.dataset(dataset).gmm, x, labels)
        return {"modes_covered": cov["modes_covered"], "modes_expected": cov["modes_expected"],
                "energy_distance": metrics.energy_distance(x, ref_x)}

    def render_panel(self, x, labels=None, *, dataset, ax=None, title=None):
        if ax is None:
            ax = Figure(figsize=(4, 3)).subplots()
        x = torch.as_tensor(x)[:32]
        labels = torch.zeros(len(x), dtype=torch.long) if labels is None else torch.as_tensor(labels)[:32]
        for signal, c in zip(x, labels):
            ax.plot(signal.numpy(), color=f"C{int(c)}", lw=0.8, alpha=0.7)
        ax.set_title(title or "")
        return ax


@pytest.fixture(scope="module")
def signals():
    """Register the family and its dataset for this module, and take them out again afterwards."""
    register_family(SignalsFamily)
    register_dataset(Dataset("sine-mix", "signals", 2, (LENGTH,), "sines of 1 and 2 periods", gmm=sine_mix(),
                             teacher_cfg=2.0))
    yield get_family("sine-mix")
    DATASETS.pop("sine-mix")
    FAMILIES.pop("signals")


def run_cli(capsys, *args):
    from pdmd_lab.cli import main

    code = main(["--threads", "1", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_family_is_found_from_its_dataset(signals):
    assert signals is FAMILIES["signals"] and get_family("signals") is signals
    assert signals.datasets() == ["sine-mix"] and signals.shape("sine-mix") == (LENGTH,)
    assert signals.has_oracle("sine-mix") and signals.teacher_cfg("sine-mix") == 2.0
    assert signals.lower_is_better("energy_distance") is True and signals.lower_is_better("recall") is False
    ax = signals.render_panel(torch.randn(5, LENGTH), torch.tensor([0, 1, 0, 1, 0]), dataset="sine-mix", title="x")
    assert len(ax.lines) == 5 and ax.get_title() == "x"
    assert len(signals.render_grid({"a": torch.randn(3, LENGTH), "b": torch.randn(3, LENGTH)},
                                   dataset="sine-mix").axes) == 2


def test_list_sample_and_evaluate(signals, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "sine-mix/teacher" in out.split()
    code, out, err = run_cli(capsys, "sample", "--model", "sine-mix/teacher", "--steps", "8", "--n", "12",
                             "--out", tmp_path / "s.png")
    assert code == 0, err
    assert (tmp_path / "s.png").stat().st_size > 5_000
    code, out, err = run_cli(capsys, "evaluate", "--models", "sine-mix/teacher@8", "--n", "200",
                             "--out", tmp_path / "eval")
    assert code == 0, err
    assert "| model | NFE | modes covered | energy dist. | recall | pairwise dist. |" in out
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert set(rows) == {f"sine-mix/teacher@{k}" for k in (50, 8, 4, 1)}
    # the exact teacher at 50 steps finds all 4 modes; one Euler step lands on the posterior mean of the
    # noise, between the modes: far in energy distance and (almost) no mode reached
    assert rows["sine-mix/teacher@50"]["modes_covered"] == 4
    assert rows["sine-mix/teacher@50"]["energy_distance"] < 0.2 * rows["sine-mix/teacher@1"]["energy_distance"]
    assert rows["sine-mix/teacher@1"]["modes_covered"] < 4
    assert rows["sine-mix/teacher@50"]["recall"] > 2 * rows["sine-mix/teacher@4"]["recall"]  # few steps: less spread
    assert rows["sine-mix/teacher@50"]["nfe"] == 100  # CFG 2: two calls per step


def test_distill_a_student(signals, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PDMD_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, "distill", "--teacher", "oracle:sine-mix", "--method", "dmd", "--iters", "3",
                             "--batch-size", "16", "--init-iters", "30", "--cfg", "2", "--out", tmp_path / "dmd")
    assert code == 0, err
    from pdmd_lab import zoo

    student = zoo.load(str(tmp_path / "dmd"))
    assert student.dataset == "sine-mix" and student.nfe == 1
    x = student.sample(torch.arange(10) % 2, seed=0)
    assert x.shape == (10, LENGTH) and torch.isfinite(x).all()
    assert get_family(student) is signals

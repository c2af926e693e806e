"""``parallel.distill_all`` / ``start_all``: independent runs in worker processes return the students a sequential
loop returns."""

from __future__ import annotations

import pytest
import torch

from pdmd_lab.distill import DistillConfig
from pdmd_lab.parallel import distill_all, start_all


def _configs():
    common = dict(teacher="oracle:ring-mix", cfg=3.0, iters=2, batch_size=16, init_iters=3,
                  fake_updates_per_generator_update=1, net={"type": "mlp", "data_dim": 2, "num_classes": 4,
                                                            "hidden": 16, "depth": 1})
    return {"dmd": DistillConfig.from_flat(**common, method="dmd", steps=1),
            "phased": DistillConfig.from_flat(**common, method="phased-dmd", steps=2, phases=2)}


def test_workers_return_the_sequential_students(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMD_CACHE", str(tmp_path))  # the tiny starting net is fitted, not read from a user cache
    sequential = distill_all(_configs(), processes=1)
    runs = start_all(_configs(), processes=2)  # returns while the workers train; result() waits for them
    parallel = runs.result()
    forked = start_all(_configs(), processes=2, start_method="fork").result()  # workers copy this process
    assert runs.done() and runs.result().keys() == parallel.keys()
    assert list(parallel) == ["dmd", "phased"]
    for name, (student, seconds) in parallel.items():
        assert seconds > 0
        ref = sequential[name][0].state_dict()
        got = student.state_dict()
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.allclose(ref[k], got[k], atol=1e-6), (name, k)
        labels = torch.arange(8) % 4
        assert torch.allclose(student.sample(labels, seed=3), sequential[name][0].sample(labels, seed=3), atol=1e-5)
        assert all(torch.equal(v, forked[name][0].state_dict()[k]) for k, v in got.items())  # fork = spawn


def test_bad_values_fail_before_any_worker():
    with pytest.raises(ValueError, match="configs"):
        distill_all({})
    with pytest.raises(ValueError, match="processes"):
        distill_all(_configs(), processes=0)
    with pytest.raises(ValueError, match="threads"):
        distill_all(_configs(), threads=0)
    with pytest.raises(ValueError, match="processes"):
        start_all(_configs(), processes=-1)
    with pytest.raises(ValueError, match="start_method"):
        start_all(_configs(), processes=2, start_method="thread")

"""Per-exit views: the tables behind `pdmd-lab figures --per-exit` on the exact oracle."""

import torch

from pdmd_lab import collapse, zoo
from pdmd_lab.data import get_dataset


def test_own_and_shared_modes_of_ring_mix():
    own, shared = collapse.own_and_shared_modes(get_dataset("ring-mix").gmm)
    # Class c holds modes 2c, 2c+1, 2c+2: the odd one is its own, the even ones are shared with a neighbour.
    assert own.sum(1).tolist() == [1, 1, 1, 1] and shared.sum(1).tolist() == [2, 2, 2, 2]
    assert all(own[c, 2 * c + 1] for c in range(4))


def test_per_exit_tables_on_the_oracle_teacher():
    teacher = zoo.load("ring-mix/teacher", steps=4)
    labels = torch.arange(800) % 4
    out = collapse.per_exit_outputs(teacher, labels, seed=0)
    assert len(out["x0"]) == 4 and out["t"] == [1.0, 0.75, 0.5, 0.25]
    ref = zoo.load("ring-mix/teacher", steps=50).sample(labels, seed=99)
    rows = collapse.exit_mode_shares("ring-mix", out, labels, ref)
    for r in rows:
        assert 0 <= r["own_share"] + r["shared_share"] <= 1 + 1e-9
    # Exit 1 predicts x0 from pure noise: the class mean, between the modes (little mass on any mode);
    # the last exit's x0 lies on the teacher's modes (measured: 0.00 and 0.96 of the samples).
    assert rows[0]["own_share"] + rows[0]["shared_share"] < 0.2
    assert rows[-1]["own_share"] + rows[-1]["shared_share"] > 0.85
    assert rows[-1]["mode_kl"] < rows[0]["mode_kl"]

"""evaluate_models, score_samples, bench and DiversityMonitor on tiny ring-mix students (CPU, fast)."""

from __future__ import annotations

import json

import pytest
import torch

from pdmd_lab import evaluate as E
from pdmd_lab.data import get_dataset
from pdmd_lab.distill import DistillConfig, build_distiller, distill

NET = {"type": "mlp", "data_dim": 2, "num_classes": 4, "hidden": 32, "depth": 1, "emb_dim": 16}


def _tiny(method, out, **kw):
    cfg = DistillConfig.from_flat(teacher="oracle:ring-mix", method=method, iters=4, batch_size=32, init_iters=20,
                        fake_updates_per_generator_update=1, net=dict(NET), **kw)
    distill(cfg, out=out, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def tiny_students(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return [_tiny("dmd", root / "dmd", steps=1), _tiny("phased-dmd", root / "pdmd", steps=2, phases=2)]


def test_evaluate_models_ring_mix(tiny_students, tmp_path):
    res = E.evaluate_models(tiny_students, n=200, batch_size=100, out=tmp_path, progress=False)
    assert res["family"] == "ring-mix" and res["reference"] == "ring-mix/teacher@50"
    rows = res["rows"]
    for name in [*tiny_students, "ring-mix/teacher@50", "ring-mix/teacher@4", "ring-mix/teacher@1"]:
        assert name in rows
    for r in rows.values():
        for key in ("nfe", "ms_per_batch", "speedup", "modes_covered", "high_quality", "energy_distance",
                    "precision", "recall", "density", "coverage", "vendi", "vendi_ratio", "pairwise_distance_ratio"):
            assert key in r
    assert rows["ring-mix/teacher@50"]["nfe"] == 100 and rows["ring-mix/teacher@50"]["speedup"] == 1.0
    ref = rows["ring-mix/teacher@50"]  # vs the reference set drawn with other noise: the floor
    assert ref["energy_distance"] < 0.05 and ref["precision"] > 0.8 and ref["recall"] > 0.8
    assert 0.8 < ref["vendi_ratio"] < 1.25
    assert rows["ring-mix/teacher@1"]["energy_distance"] > ref["energy_distance"] + 0.5  # 1 Euler step: the mean
    assert res["floor"]["energy_distance"] == ref["energy_distance"]
    md = (tmp_path / "metrics.md").read_text()
    assert md == E.markdown_table(res)
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    assert len(table) == len(rows)
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"].keys() == rows.keys()


def test_score_samples_sees_collapse():
    ds = get_dataset("ring-mix")
    labels = torch.arange(400) % ds.num_classes
    ref = ds.gmm.sample(len(labels), seed=0, labels=labels)[0].float()
    other = ds.gmm.sample(len(labels), seed=1, labels=labels)[0].float()
    # collapse: every class puts all its samples at its first mode
    first_mode = ds.gmm.weights.argmax(1)
    collapsed = ds.gmm.means[first_mode[labels]].float() + 0.05 * torch.randn(len(labels), 2)
    s = E.score_samples("ring-mix", {"ref": ref, "other": other, "collapsed": collapsed}, labels, "ref")
    assert s["collapsed"]["mode_coverage"] < s["other"]["mode_coverage"]
    assert s["collapsed"]["vendi"] < 0.7 * s["other"]["vendi"]
    assert s["collapsed"]["vendi_ratio"] < 0.7
    assert s["collapsed"]["recall"] < s["other"]["recall"]
    assert s["collapsed"]["energy_distance"] > s["other"]["energy_distance"]


def test_score_takes_features_computed_already():
    """The app passes the features it embedded: the same numbers, and they are what is scored."""
    from pdmd_lab.families import get_family

    fam, ds = get_family("ring-mix"), get_dataset("ring-mix")
    labels = torch.arange(120) % ds.num_classes
    ref, other = (ds.gmm.sample(len(labels), seed=s, labels=labels)[0].float() for s in (0, 1))
    sets = {"ref": ref, "other": other}
    plain = fam.score("ring-mix", sets, labels, "ref")
    feats = {k: fam.features("ring-mix", v) for k, v in sets.items()}
    given = fam.score("ring-mix", sets, labels, "ref", features=feats)
    assert given == plain
    shifted = fam.score("ring-mix", sets, labels, "ref", features={"other": other + 5.0})
    assert shifted["other"]["recall"] < plain["other"]["recall"]  # the given features were scored (PRDC on them)
    assert shifted["ref"] == plain["ref"]


def test_bad_input(tiny_students):
    with pytest.raises(ValueError, match="empty"):
        E.evaluate_models([], progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        E.evaluate_models(["ring-mix/no-such-model"], progress=False)
    with pytest.raises(ValueError, match="too small"):
        E.evaluate_models(tiny_students[:1], n=5, progress=False)
    with pytest.raises(ValueError, match="step count"):
        E.evaluate_models(["ring-mix/teacher@x"], progress=False)
    with pytest.raises(ValueError, match="reference"):
        E.score_samples("ring-mix", {"a": torch.zeros(8, 2)}, torch.zeros(8), "b")
    with pytest.raises(ValueError):
        E.DiversityMonitor(n=1)


def test_bench_quick_memory_argument(tmp_path):
    from pdmd_lab import bench

    res = bench.bench(quick=True, out=tmp_path)
    assert [r["N"] for r in res["memory"]] == [1, 2, 4]
    for r in res["memory"]:
        if r["N"] >= 2:  # Phased DMD keeps one step's activations, full backprop all N
            assert r["phased_saved_mb"] < r["full_saved_mb"]
    assert res["memory"][-1]["memory_ratio"] > 2
    teacher = next(k for k in res["sampling"] if k.endswith("teacher@50"))
    assert res["sampling"][teacher]["nfe"] == 100
    assert all("speedup" in r for r in res["sampling"].values())
    assert (tmp_path / "bench.md").read_text() == bench.bench_markdown(res)


def test_diversity_monitor_in_distiller(tmp_path):
    mon = E.DiversityMonitor(n=64)
    cfg = DistillConfig(teacher="oracle:ring-mix", method="dmd", steps=1, iters=4, batch_size=32,
                        init_iters=20, fake_updates_per_generator_update=1, log_every=1, net=dict(NET))
    build_distiller(cfg, tmp_path, progress=False, callbacks=[mon], callback_every=2).train()
    records = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    with_div = [r for r in records if "div_vendi" in r]
    assert [r["iter"] for r in with_div] == [2, 4]
    for r in with_div:
        assert {"div_pairwise_distance", "div_vendi", "div_saturation"} <= r.keys()
        assert 0 <= r["div_saturation"] <= 1 and r["div_vendi"] >= 1


def test_diversity_monitor_images():
    mon = E.DiversityMonitor(n=20)
    ds = get_dataset("mnist")
    x = torch.rand(20, *ds.shape) * 2 - 1
    logs = mon.measure(ds, x, torch.arange(20) % 10)
    assert {"div_pairwise_cosine", "div_vendi", "div_saturation"} <= logs.keys()

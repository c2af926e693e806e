"""`pdmd-lab study`: intervals, resumability, tables and the 2D metrics on known cases."""

import json
import math

import numpy as np
import pytest
import torch

from pdmd_lab import study
from pdmd_lab.cli import main
from pdmd_lab.data import get_dataset


def test_mean_ci_is_the_student_t_interval():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, half = study.mean_ci(v)
    assert mean == 3.0
    assert half == pytest.approx(2.776 * np.std(v, ddof=1) / math.sqrt(5))  # t_{0.975, 4} = 2.776
    assert math.isnan(study.mean_ci([2.0])[1])
    assert study.parse_seeds("0-4") == [0, 1, 2, 3, 4] and study.parse_seeds("1,3") == [1, 3]
    with pytest.raises(ValueError, match="seeds"):
        study.parse_seeds("a-b")



def test_difference_ci_is_welch():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0] * 5
    diff, half = study.difference_ci(a, b)  # b has no spread: the one-sample interval of a, shifted
    assert diff == 1.0 and half == pytest.approx(2.776 * np.std(a, ddof=1) / math.sqrt(5))
    a, b = [0.1, 0.4, 0.35, 0.2, 0.3], [1.0, 3.0, 2.0, 2.5, 1.5]
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)  # Welch-Satterthwaite: 4.3 here, so t_{0.975, 4}
    assert 4 < df < 5
    assert study.difference_ci(a, b) == pytest.approx((np.mean(a) - np.mean(b), 2.776 * math.sqrt(va + vb)))
    assert math.isnan(study.difference_ci([1.0], b)[1])


def test_score_2d_sees_a_dropped_mode_and_a_collapse():
    ds = get_dataset("ring-mix")
    labels = torch.arange(4000) % 4
    ref, _ = ds.sample(4000, seed=0, labels=labels)
    same, _ = ds.sample(4000, seed=1, labels=labels)
    good = study.score_2d("ring-mix", same, labels, ref)
    assert good["teacher_modes_missed"] == 0 and good["off_mode"] < 0.01 and abs(good["spread"] - 1) < 0.05
    # Class 0 puts everything on its heaviest mode, at the mode centre: one mode missed, spread ~0.
    collapsed = same.clone()
    collapsed[labels == 0] = ds.gmm.means[0].float()
    bad = study.score_2d("ring-mix", collapsed, labels, ref)
    assert bad["teacher_modes_missed"] == 2  # modes 1 and 2 of class 0 (both hold >= 2% of its data)
    assert bad["energy_distance"] > good["energy_distance"] + 0.01 and bad["spread"] < good["spread"]


def test_study_resumes_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["study", "--rows", "ring-mix/teacher@2,ring-mix/teacher@4", "--seeds", "0-1", "--n", "300",
            "--out", str(out)]
    assert main(args) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["seed"]) for r in runs) == [("ring-mix/teacher@2", 0), ("ring-mix/teacher@2", 1),
                                                           ("ring-mix/teacher@4", 0), ("ring-mix/teacher@4", 1)]
    assert all(r["config"] == {"model": r["row"]} for r in runs)
    assert all(r["commit"] is None or len(r["commit"]) == 40 for r in runs)
    assert main(args) == 0  # resumed: nothing left to run
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4
    # A line whose recorded config differs from the row's now, or that records none, is run again;
    # the tables use the last line of each (row, seed).
    lines = (out / "runs.jsonl").read_text().splitlines()
    changed = {**json.loads(lines[0]), "config": {"model": "something else"}, "energy_distance": 99.0}
    legacy = {k: v for k, v in json.loads(lines[1]).items() if k not in ("config", "commit")}
    (out / "runs.jsonl").write_text("\n".join([json.dumps(changed), json.dumps(legacy), *lines[2:]]) + "\n")
    assert main(args) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 6 and {(r["row"], r["seed"]) for r in runs[4:]} == {(changed["row"], changed["seed"]),
                                                                              (legacy["row"], legacy["seed"])}
    assert "run again" in capsys.readouterr().out
    assert max(r["energy_distance"] for r in study.read_runs(out, latest=True)) < 1
    summary = json.loads((out / "summary.json").read_text())["ring-mix"]
    assert summary["ring-mix/teacher@2"]["n_seeds"] == 2 and summary["ring-mix/teacher@4"]["nfe"] == 8
    # teacher@2 (4 NFE) is further from the 50-step teacher than teacher@4.
    assert summary["ring-mix/teacher@2"]["energy_distance"][0] > summary["ring-mix/teacher@4"]["energy_distance"][0]
    assert (out / "summary.png").stat().st_size > 5000 and "± " in (out / "summary.md").read_text()
    code = main([*args[:-2], "--set", "iters=4", "--out", str(out)])
    assert code == 2 and "other settings" in capsys.readouterr().err


def test_resolved_config_names_the_weighting_and_every_dmd_recipe_pins_it():
    from pdmd_lab.distill import get_method
    from pdmd_lab.distill.methods import DMDFamily
    from pdmd_lab.recipes import RECIPES

    ref = study.resolved_config("study/ring-mix/dmd2-sgts-4s", 0)
    paper = study.resolved_config("study/ring-mix/dmd2-sgts-4s-paper", 0)
    assert ref["weighting"] == "dmd2" and paper["weighting"] == "paper" and ref["seed"] == 0
    assert {k for k in ref if ref[k] != paper[k]} == {"weighting"}
    assert study.config_hash(ref) != study.config_hash(paper)
    assert study.resolved_config("study/ring-mix/dmd-1s", 3, {"iters": 8})["iters"] == 8
    # The rerun rule: equal configs match; a changed value does not; a key added since matches at its default.
    assert study.same_config(dict(ref), ref) and not study.same_config(paper, ref) and not study.same_config(None, ref)
    before = {k: v for k, v in ref.items() if k != "t_shift"}
    assert study.same_config(before, ref) and not study.same_config(before, {**ref, "t_shift": 2.0})
    dmd_recipes = [n for n, r in RECIPES.items() if r["kind"] == "student" and issubclass(get_method(r["method"]),
                                                                                          DMDFamily)]
    assert len(dmd_recipes) > 10 and all("weighting" in RECIPES[n] for n in dmd_recipes)
    assert RECIPES["ring-mix/dmd2-sgts-4s"]["weighting"] == "paper"  # as the shipped student was trained


def test_shipped_studies_record_their_configs():
    """The shipped study folders were migrated: every line records the config it ran with, and a row
    is named after its weighting (the baselines' old "paper" runs are the `-paper` rows)."""
    from pathlib import Path

    root = Path(study.__file__).resolve().parents[1] / "assets" / "results"
    for fam in ("ring-mix", "grid-mix"):
        runs = study.read_runs(root / f"study-{fam}")
        assert runs and all("config" in r and "commit" in r for r in runs)
        # No line is stale: each one's config is what its row resolves to now (a setting added since, such as
        # fused_optimizer, at its default: how the line ran), so `pdmd-lab study` reruns none of them.
        assert all(study.same_config(r["config"], study.resolved_config(r["row"], r["seed"])) for r in runs)
        now = study.resolved_config(runs[0]["row"], runs[0]["seed"])
        assert not study.same_config(runs[0]["config"], {**now, "fused_optimizer": True})  # not at its default
        old = [r for r in runs if r["row"].endswith("-paper")]
        assert old and all(r["config"]["weighting"] == "paper" for r in old)


def test_student_row_records_its_config_run_folder_and_training_time(tmp_path):
    out = tmp_path / "s"
    args = ["study", "--rows", "study/ring-mix/dmd-1s", "--seeds", "0", "--n", "200", "--set", "iters=2",
            "--set", "init_iters=5", "--set", "batch_size=32", "--set", "checkpoint_every=1", "--out", str(out)]
    assert main(args) == 0
    (run,) = study.read_runs(out)
    overrides = {"iters": 2, "init_iters": 5, "batch_size": 32, "checkpoint_every": 1}
    assert run["config"] == study.resolved_config("study/ring-mix/dmd-1s", 0, overrides)
    assert run["config"]["weighting"] == "dmd2" and run["config"]["iters"] == 2
    folder = out / "runs" / "study/ring-mix/dmd-1s" / f"seed0-{study.config_hash(run['config'])}"
    assert run["train_s"] == round(json.loads((folder / "config.json").read_text())["wall_time_s"], 1)

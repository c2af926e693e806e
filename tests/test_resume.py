"""Resume as users expect: a larger --iters extends a finished one-phase run (the same weights as one longer
run); phased runs say why not; options equal to the recorded ones (default or explicit, paths normalised)
are accepted, changed ones refused naming the difference; log.jsonl holds each iteration once after a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_distill import tiny, weights

from pdmd_lab import io
from pdmd_lab.cli import main
from pdmd_lab.distill import build_distiller
from pdmd_lab.student import Student

BASE = ["distill", "--teacher", "oracle:ring-mix", "--iters", "2", "--init-iters", "5", "--batch-size", "8",
        "--fake-updates", "1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PDMD_CACHE", str(tmp_path_factory.getbasetemp() / "resume-cache"))


def cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def iters_logged(out: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def test_larger_iters_extends_a_finished_one_phase_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(capsys, *BASE, "--method", "dmd", "--out", a)[0] == 0
    assert io.read_config(a)["complete"] is True and io.read_config(a)["iters"] == 2
    code, err = cli(capsys, "distill", "--resume", "--iters", "4", "--out", a)  # the recorded settings, longer
    assert code == 0, err
    assert cli(capsys, *BASE, "--method", "dmd", "--iters", "4", "--out", b)[0] == 0
    extended, straight = Student.load(a), Student.load(b)
    for k, v in weights(straight).items():
        torch.testing.assert_close(weights(extended)[k], v, rtol=0, atol=0)
    cfg = io.read_config(a)
    assert cfg["iters"] == 4 and cfg["complete"] is True and cfg["seed"] == 0
    assert iters_logged(a) == [2, 4]


def test_phased_run_cannot_change_iters_and_says_why(tmp_path, capsys):
    out = tmp_path / "p"
    argv = [*BASE, "--method", "phased-dmd", "--steps", "2", "--phases", "2", "--out", out]
    assert cli(capsys, *argv)[0] == 0
    before = (out / "expert_1.safetensors").read_bytes()
    code, err = cli(capsys, "distill", "--resume", "--iters", "4", "--out", out)
    assert code == 2 and "split over 2 phases" in err and len(err.strip().splitlines()) == 1
    assert (out / "expert_1.safetensors").read_bytes() == before
    # The same settings again (nothing left to train) are accepted.
    assert cli(capsys, *argv, "--resume")[0] == 0


def test_recorded_options_repeated_are_accepted_changed_ones_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli(capsys, *BASE, "--method", "dmd", "--out", out)[0] == 0
    before = (out / "expert_0.safetensors").read_bytes()
    # Explicit values equal to the recorded ones, and a method option at its default, are the same run.
    for extra in (["--seed", "0"], ["--batch-size", "8", "--fake-updates", "1"], ["--t-min", "0.02"],
                  ["--method", "dmd", "--teacher", "oracle:ring-mix"]):
        code, err = cli(capsys, "distill", "--resume", *extra, "--out", out)
        assert code == 0, (extra, err)
    # Changed ones are refused, naming the option and both values; nothing is touched.
    for extra, named in ((["--seed", "7"], "seed=0, not 7"), (["--lr-fake", "0.5"], "lr_fake="),
                         (["--t-min", "0.1"], "options.t_min=0.02, not 0.1"), (["--cfg", "1"], "cfg=")):
        code, err = cli(capsys, "distill", "--resume", *extra, "--out", out)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert (out / "expert_0.safetensors").read_bytes() == before
    assert io.read_config(out)["seed"] == 0 and iters_logged(out) == [2]


def test_teacher_folder_path_is_compared_normalised(tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    assert cli(capsys, "train-teacher", "--data", "ring-mix", "--iters", "2", "--batch-size", "16",
               "--out", teacher)[0] == 0
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s"
    argv = ["distill", "--method", "dmd", "--iters", "2", "--batch-size", "8", "--fake-updates", "1"]
    assert cli(capsys, *argv, "--teacher", "teacher", "--out", out)[0] == 0  # relative
    code, err = cli(capsys, *argv, "--teacher", str(teacher), "--iters", "3", "--resume", "--out", out)  # absolute
    assert code == 0, err
    assert io.read_config(out)["iters"] == 3


def test_log_holds_each_iteration_once_after_a_kill(tmp_path):
    out = tmp_path / "k"

    def kill(info):
        if info["iter"] == 3:  # after iteration 3 (checkpoint at 2): the log already has 1, 2, 3
            raise KeyboardInterrupt

    d = build_distiller(tiny(method="dmd", steps=1), out, progress=False, callbacks=[kill], callback_every=1)
    with pytest.raises(KeyboardInterrupt):
        d.train()
    assert iters_logged(out) == [1, 2] or iters_logged(out) == [1, 2, 3]
    with open(out / "log.jsonl", "a") as f:  # what a kill -9 after logging iteration 3 leaves
        if iters_logged(out) == [1, 2]:
            f.write(json.dumps({"iter": 3, "phase": 1}) + "\n")
        f.write('{"iter": 4, "pha')  # and a line cut short
    resumed = build_distiller(tiny(method="dmd", steps=1), out, progress=False)
    assert resumed.it == 2
    resumed.train()
    assert iters_logged(out) == [1, 2, 3, 4]


def test_teacher_log_holds_each_iteration_once_after_a_kill(tmp_path, capsys):
    out = tmp_path / "t"
    args = ["train-teacher", "--data", "ring-mix", "--batch-size", "16", "--checkpoint-every", "50", "--out", out]
    assert cli(capsys, *args, "--iters", "50")[0] == 0
    with open(out / "log.jsonl", "a") as f:  # logged at 100 by a run killed before its checkpoint at 100
        f.write(json.dumps({"iter": 100, "loss": 9.0}) + "\n")
    assert cli(capsys, *args, "--iters", "100")[0] == 0
    assert iters_logged(out) == [50, 100]
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["loss"] != 9.0


def test_resume_refuses_a_folder_without_a_run(tmp_path, capsys):
    (tmp_path / "e").mkdir()
    for target in ("e", "missing"):
        code, err = cli(capsys, "distill", "--resume", "--out", tmp_path / target)
        assert code == 2 and "holds no run to resume" in err
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path / "e") == []


def test_a_failure_names_a_checkpoint_only_if_there_is_one(tmp_path):
    def nan_after(run, at):
        orig = run.method.critic_loss

        def critic_loss(r, draw):
            loss, logs = orig(r, draw)
            return (loss * float("nan") if r.it >= at else loss), logs
        run.method.critic_loss = critic_loss
        return run

    d = nan_after(build_distiller(tiny(method="dmd", steps=1), tmp_path / "a", progress=False), 0)
    with pytest.raises(RuntimeError, match="at iteration 0 .*; no checkpoint was written"):
        d.train()
    assert not (tmp_path / "a" / "train_state").exists()
    d = nan_after(build_distiller(tiny(method="dmd", steps=1), tmp_path / "b", progress=False), 3)
    with pytest.raises(RuntimeError, match=r"the last checkpoint \(iteration 2\) in .* is intact"):
        d.train()
    assert io.read_config(tmp_path / "b" / "train_state")["iter"] == 2


def test_a_teacher_without_a_recipe_gets_its_familys_sizes(tmp_path, capsys):
    # Stopped by a bad phase count right after the defaults are chosen: nothing is trained or loaded.
    code = main(["distill", "--teacher", "zoo:mnist/teacher", "--method", "phased-dmd", "--phases", "3",
                 "--out", str(tmp_path / "m")])
    out, err = capsys.readouterr()
    assert code == 2 and "must divide" in err
    assert "sizes from recipe mnist/phased-dmd-4s4p" in out and "batch_size=32" in out
    code = main(["distill", "--teacher", "oracle:ring-mix-tokens", "--method", "d-mmd", "--phases", "2",
                 "--out", str(tmp_path / "t")])
    out, err = capsys.readouterr()
    assert code == 2 and "does not apply" in err and "sizes from recipe ring-mix-tokens/" in out
    assert not (tmp_path / "m").exists() and not (tmp_path / "t").exists()


def test_teacher_resume_refuses_other_settings_and_restart_replaces_only_its_run(tmp_path, capsys):
    out = tmp_path / "t"
    args = ["train-teacher", "--data", "ring-mix", "--iters", "2", "--batch-size", "16", "--out", out]
    assert cli(capsys, *args)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, err = cli(capsys, *args, "--seed", "1", "--iters", "4")
    assert code == 2 and "seed=0, not 1" in err and (out / "model.safetensors").read_bytes() == before
    code, err = cli(capsys, *args, "--seed", "1", "--restart")  # the kit's own run: started again
    assert code == 0, err
    assert io.read_config(out)["seed"] == 1 and iters_logged(out) == [2]

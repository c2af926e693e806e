"""Teachers: the exact oracle, a CLI-trained MLP teacher (mode coverage, resume) and loading errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pdmd_lab import flow, io
from pdmd_lab.cli import main
from pdmd_lab.sampling import sample_euler
from pdmd_lab.teacher import Guided, OracleTeacher, load_teacher

TRAIN_ITERS = 1500  # ~20-30 s on one busy CPU core; 1000 already covers every mode


def _train(out, *args) -> int:
    return main(["train-teacher", "--data", "ring-mix", "--out", str(out), *map(str, args)])


# Oracle ------------------------------------------------------------------------------------------


def test_oracle_teacher_reproduces_mixture(ring_mix, energy_distance):
    """100 Euler steps of the exact velocity (cfg = 1) land on the data distribution: energy distance
    to fresh data within 2x the data-vs-data value at the same sample size (averaged over 3 seeds)."""
    oracle = OracleTeacher(ring_mix.gmm, "ring-mix")
    assert oracle.num_classes == 4
    ts = flow.step_times(100)
    n, ed_model, ed_data = 2000, 0.0, 0.0
    for seed in range(3):
        data, labels = ring_mix.sample(n, seed=100 + seed)
        fresh, _ = ring_mix.sample(n, seed=200 + seed)
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        x = sample_euler(oracle, z, ts, class_labels=labels)
        ed_model += energy_distance(x, data) / 3
        ed_data += energy_distance(fresh, data) / 3
    assert ed_model < 2 * ed_data, (ed_model, ed_data)  # measured ~0.0015 vs ~0.0037


def test_load_oracle_and_guided(ring_mix):
    oracle = load_teacher("oracle:ring-mix")
    assert isinstance(oracle, OracleTeacher) and oracle.dataset == "ring-mix"
    x = torch.randn(16, 2)
    labels = torch.arange(16) % 4
    torch.testing.assert_close(oracle(x, 0.5, labels), ring_mix.gmm.velocity(x, 0.5, labels))
    v_c, v_u = oracle(x, 0.5, labels), oracle(x, 0.5, None)
    torch.testing.assert_close(Guided(oracle, 3.0)(x, 0.5, labels), v_u + 3.0 * (v_c - v_u),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cfg"):
        Guided(oracle, -1.0)
    with pytest.raises(ValueError, match="no oracle for dataset 'moons'"):
        load_teacher("oracle:moons")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_teacher("oracle:nosuch")


# A teacher trained by the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "ring-mix"
    assert _train(out, "--iters", TRAIN_ITERS, "--batch-size", 128) == 0
    return out


@pytest.mark.slow
def test_trained_teacher_covers_every_mode(trained_teacher, ring_mix):
    """50 Euler steps per class: every mode of a class gets >= 2% of that class's samples (within
    3 std), and modes outside the class get < 2%."""
    cfg = io.read_config(trained_teacher)
    assert cfg["kind"] == "teacher" and cfg["dataset"] == "ring-mix" and cfg["iters"] == TRAIN_ITERS
    assert cfg["net"]["type"] == "mlp" and cfg["train"]["batch_size"] == 128
    teacher = load_teacher(trained_teacher)
    assert teacher.dataset == "ring-mix" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())

    gmm, n = ring_mix.gmm, 1000
    labels = torch.arange(4).repeat_interleave(n)
    z = torch.randn(4 * n, 2, generator=torch.Generator().manual_seed(0))
    x = sample_euler(teacher, z, flow.step_times(50), class_labels=labels)
    modes = gmm.assign_modes(x, num_std=3.0)
    for c in range(4):
        share = torch.bincount(modes[labels == c] + 1, minlength=9)[1:].double() / n  # (K,)
        has = gmm.weights[c] > 0
        assert (share[has] >= 0.02).all(), (c, share)
        assert (share[~has] < 0.02).all(), (c, share)


# Resume --------------------------------------------------------------------------------------------


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_resume_continues(tmp_path):
    out, straight = tmp_path / "resumed", tmp_path / "straight"
    args = ("--batch-size", 32, "--checkpoint-every", 10)
    # The global RNG is seeded because train_teacher does not seed the network init from --seed
    # (see test_same_seed_same_teacher); resuming overwrites the init with the checkpoint anyway.
    torch.manual_seed(0)
    assert _train(out, "--iters", 20, *args) == 0
    assert io.read_config(out)["iters"] == 20 and io.read_config(out / "train_state")["step"] == 20
    torch.manual_seed(123)
    assert _train(out, "--iters", 30, *args) == 0
    log = _log(out)
    assert [r["iter"] for r in log] == [20, 30]  # appended, not restarted
    assert log[1]["time_s"] > log[0]["time_s"]
    cfg = io.read_config(out)
    assert cfg["iters"] == 30 and cfg["train"]["iters"] == 30
    assert io.read_config(out / "train_state")["step"] == 30

    # 20 + 10 iterations equal 30 in one go (same data, noise, optimizer state and EMA).
    torch.manual_seed(0)
    assert _train(straight, "--iters", 30, *args) == 0
    assert _log(straight)[-1]["loss"] == pytest.approx(log[-1]["loss"], rel=1e-5)
    a, b = io.read_tensors(out, "model"), io.read_tensors(straight, "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_same_seed_same_teacher(tmp_path):
    torch.manual_seed(1)
    assert _train(tmp_path / "a", "--iters", 5, "--batch-size", 16, "--seed", 3) == 0
    torch.manual_seed(2)
    assert _train(tmp_path / "b", "--iters", 5, "--batch-size", 16, "--seed", 3) == 0
    a, b = io.read_tensors(tmp_path / "a", "model"), io.read_tensors(tmp_path / "b", "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


# Loading errors: one-line ValueErrors; CLI exit code 2 ------------------------------------------------


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "teacher"
    assert _train(out, "--iters", 3, "--batch-size", 8) == 0
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _load_error(spec) -> str:
    with pytest.raises(ValueError) as e:
        load_teacher(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


def test_load_errors(small_teacher, tmp_path):
    assert load_teacher(small_teacher).dataset == "ring-mix"  # the intact folder loads

    assert "does not exist" in _load_error(tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _load_error(empty)

    bad_json = _copy(small_teacher, tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    assert "corrupt" in _load_error(bad_json)

    no_weights = _copy(small_teacher, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    assert "model.safetensors" in _load_error(no_weights)

    garbage = _copy(small_teacher, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x93NUMPY garbage, not safetensors" * 10)
    assert "corrupt weights" in _load_error(garbage)

    truncated = _copy(small_teacher, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "corrupt weights" in _load_error(truncated)

    mismatch = _copy(small_teacher, tmp_path / "mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["net"]["hidden"] = cfg["net"]["hidden"] // 2
    (mismatch / "config.json").write_text(json.dumps(cfg))
    assert "do not match its config" in _load_error(mismatch)

    not_teacher = _copy(small_teacher, tmp_path / "not_teacher")
    cfg = json.loads((not_teacher / "config.json").read_text())
    cfg["kind"] = "student"
    (not_teacher / "config.json").write_text(json.dumps(cfg))
    assert "not a teacher folder" in _load_error(not_teacher)

    unknown_net = _copy(small_teacher, tmp_path / "unknown_net")
    cfg = json.loads((unknown_net / "config.json").read_text())
    cfg["net"]["type"] = "transformer"
    (unknown_net / "config.json").write_text(json.dumps(cfg))
    assert "unknown network type" in _load_error(unknown_net)


def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_errors_exit_2(capsys, small_teacher, tmp_path):
    line = _cli_error(capsys, ["train-teacher", "--data", "nosuch", "--out", str(tmp_path / "x")])
    assert line.startswith("pdmd-lab train-teacher: error: unknown dataset 'nosuch'")
    assert not (tmp_path / "x").exists()

    argv = ["train-teacher", "--data", "ring-mix", "--iters", "0", "--out", str(tmp_path / "y")]
    line = _cli_error(capsys, argv)
    assert "iters must be >= 1" in line

    # Resuming a folder trained on another dataset is refused, and the folder is left as it was.
    before = (small_teacher / "model.safetensors").read_bytes()
    line = _cli_error(capsys, ["train-teacher", "--data", "grid25", "--out", str(small_teacher)])
    assert "cannot resume" in line
    assert (small_teacher / "model.safetensors").read_bytes() == before

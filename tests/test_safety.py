"""Nothing lost, nothing cryptic: bad input across every subcommand is one line and exit 2, before any work,
and every file that was there before is byte-identical afterwards; nothing is written inside the package.

One table (:data:`CASES`) of bad inputs, run in-process through ``pdmd_lab.cli.main`` in a folder of things a
user may point a command at by mistake: a distillation run, a copy of a shipped model, a diffusers model, a
folder of the user's own notes, a plain file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pdmd_lab import io, safety
from pdmd_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pdmd_lab"
ASSETS = ROOT / "assets"

# A finished tiny run on ring-mix: 2 DMD updates from a 5-iteration starting fit.
D = ["distill", "--teacher", "oracle:ring-mix", "--method", "dmd", "--iters", "2", "--init-iters", "5",
     "--batch-size", "8"]
# A tiny diffusers teacher (SD3 class, 1 layer) with a prompt table.
B = ["distill", "--teacher", "diffusers:tiny-sd3", "--method", "dmd", "--iters", "1", "--batch-size", "2",
     "--latent-shape", "4,8,8", "--fake-updates", "1"]


def run_cli(capsys, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder every case runs in (the current folder), and a private cache."""
    from pdmd_lab.backbones.prompts import PromptEmbeddings
    from pdmd_lab.backbones.tiny import random_prompts, save_tiny

    w, cache = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.chdir(w)
    mp.setenv("PDMD_CACHE", str(cache))
    try:
        assert main([*D, "--out", "run"]) == 0
        save_tiny("sd3", w / "tiny-sd3", num_layers=1)
        p = random_prompts(w / "tiny-sd3")
        p.save(w / "emb.safetensors")
        assert main([*B, "--prompts", "emb.safetensors", "--lora-rank", "2", "--out", "lora"]) == 0
    finally:
        mp.undo()
    shutil.copytree(ASSETS / "models" / "ring-mix" / "dmd-1s", w / "shipped")  # a shipped model folder
    (w / "diffusers").mkdir()  # a diffusers model folder: its config and weights
    (w / "diffusers" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    (w / "diffusers" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    PromptEmbeddings(p.prompts, p.prompt_embeds).save(w / "nopooled.safetensors")
    PromptEmbeddings(p.prompts, p.prompt_embeds[..., :16].contiguous(), p.pooled_prompt_embeds).save(
        w / "narrow.safetensors")
    save_file({"prompt_embeds": torch.full_like(p.prompt_embeds, float("nan")),
               "pooled_prompt_embeds": p.pooled_prompt_embeds}, str(w / "nan.safetensors"))
    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("the user's own notes")
    (w / "notes" / "config.json").write_text(json.dumps({"kind": "my-own"}))
    (w / "file.txt").write_text("a file of the user's")
    (w / "existing.png").write_bytes(b"a figure of the user's")
    (w / "empty").mkdir()
    (w / "evald").mkdir()
    (w / "evald" / "metrics.json").write_text("{}")
    (w / "figs").mkdir()
    (w / "figs" / "ring-mix_methods_scatter.png").write_bytes(b"an older figure")
    (w / "studyx").mkdir()
    (w / "studyx" / "runs.jsonl").write_text("")
    (w / "plugins").mkdir()
    (w / "plugins" / "pdmd_test_dup.py").write_text(
        "from pdmd_lab.distill.methods import DMD, register_method\n\n\n"
        "@register_method\nclass MyDMD(DMD):\n    name = 'dmd'\n")
    (w / "plugins" / "pdmd_test_broken.py").write_text("raise RuntimeError('the plugin is broken')\n")
    return {"root": w, "cache": cache}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (caches of Python aside) and its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def package_files() -> dict[str, str]:
    """The package's files: names of its sources (their text is the kit's, edited by people), names and
    hashes of everything else (what a command writing there by mistake would leave)."""
    return {str(p.relative_to(PACKAGE)): "source" if p.suffix == ".py" else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(PACKAGE.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


# (id, argv, what the one line must say, environment). Grouped as the "Why" lists them, then the rest
# of every subcommand.
CASES = [
    # Work destroyed, exit 0 (before)
    ("classifier-into-run", ["train-classifier", "--iters", "1", "--out", "run"], "holds a distillation run", {}),
    ("classifier-into-run-overwrite-foreign", ["train-classifier", "--iters", "1", "--overwrite", "--out", "notes"],
     "did not write", {}),
    ("distill-into-shipped", [*D, "--out", "shipped"], "holds a distilled student", {}),
    ("distill-into-diffusers", [*D, "--out", "diffusers"], "holds a diffusers model", {}),
    ("distill-into-diffusers-overwrite", [*D, "--overwrite", "--out", "diffusers"], "did not write", {}),
    ("teacher-into-student", ["train-teacher", "--data", "ring-mix", "--iters", "1", "--out", "shipped"],
     "holds a distilled student", {}),
    ("teacher-into-run-restart-foreign", ["train-teacher", "--data", "ring-mix", "--restart", "--out", "notes"],
     "did not write", {}),
    ("distill-out-empty-string", [*D, "--out", ""], "empty string", {}),
    ("resume-other-seed", ["distill", "--resume", "--seed", "7", "--out", "run"], "seed=0, not 7", {}),
    ("classifier-onto-file", ["train-classifier", "--iters", "1", "--out", "file.txt"], "existing file", {}),
    # Tracebacks (before)
    ("distill-onto-file", [*D, "--out", "file.txt"], "existing file", {}),
    ("figures-onto-file", ["figures", "--family", "ring-mix", "--out", "file.txt"], "existing file", {}),
    ("evaluate-onto-file", ["evaluate", "--models", "ring-mix/dmd-1s", "--n", "10", "--out", "file.txt"],
     "existing file", {}),
    ("distill-unwritable", [*D, "--out", "file.txt/run"], "is a file, not a folder", {}),
    ("sample-unwritable", ["sample", "--model", "shipped", "--out", "file.txt/x.png"], "is a file, not a folder", {}),
    ("embeddings-without-pooled", [*B, "--prompts", "nopooled.safetensors", "--out", "new"],
     "needs pooled_prompt_embeds", {}),
    ("study-set-not-a-number", ["study", "--set", "iters=abc", "--out", "new"], "iters must be an integer", {}),
    ("figures-label-outside-classes", ["figures", "--family", "mnist", "--label", "12"], "--label must be in [0, 9]",
     {}),
    ("sample-cfg-nan", ["sample", "--model", "ring-mix/teacher", "--cfg", "nan"], "--cfg must be a finite", {}),
    ("env-threads-not-a-number", ["list"], "PDMD_THREADS must be a positive integer", {"PDMD_THREADS": "abc"}),
    ("env-plugins-missing", ["list"], "cannot import plugin module 'pdmd_no_such_module'",
     {"PDMD_PLUGINS": "pdmd_no_such_module"}),
    # Misleading errors, exit 1 (before)
    ("distill-cfg-inf", [*D, "--cfg", "inf", "--out", "new"], "--cfg must be a finite", {}),
    ("distill-lr-inf", [*D, "--lr", "inf", "--out", "new"], "--lr-generator must be a finite", {}),
    ("distill-dp-lambda-inf", [*D[:4], "dp-dmd", *D[5:], "--dp-lambda", "inf", "--out", "new"],
     "--dp-lambda must be a finite", {}),
    ("distill-lora-alpha-inf", [*B, "--prompts", "emb.safetensors", "--lora-alpha", "inf", "--out", "new"],
     "--lora-alpha must be a finite", {}),
    ("dmmd-noise-gain-nan", ["distill", "--teacher", "oracle:ring-mix-tokens", "--method", "d-mmd", "--noise-gain",
                             "nan", "--out", "new"], "--noise-gain must be a finite", {}),
    ("embeddings-nan", [*B, "--prompts", "nan.safetensors", "--out", "new"], "non-finite", {}),
    ("embeddings-wrong-width", [*B, "--prompts", "narrow.safetensors", "--out", "new"], "takes 32", {}),
    ("latent-shape-zero", [*B, "--prompts", "emb.safetensors", "--latent-shape", "4,0,8", "--out", "new"],
     "--latent-shape must be positive", {}),
    ("sample-n-negative", ["sample", "--model", "shipped", "--n", "-3"], "--n must be >= 1", {}),
    ("threads-zero", ["--threads", "0", "list"], "--threads must be >= 1", {}),
    # Accepted silently (before)
    ("distill-cfg-nan", [*D, "--cfg", "nan", "--out", "new"], "--cfg must be a finite", {}),
    ("distill-grad-clip-negative", [*D, "--grad-clip", "-1", "--out", "new"], "--grad-clip must be > 0", {}),
    ("distill-init-iters-negative", [*D, "--init-iters", "-5", "--out", "new"], "--init-iters must be >= 1", {}),
    ("teacher-batch-zero", ["train-teacher", "--data", "ring-mix", "--batch-size", "0", "--out", "new"],
     "--batch-size must be >= 1", {}),
    ("study-jobs-zero", ["study", "--jobs", "0", "--out", "new"], "--jobs must be >= 1", {}),
    ("lora-rank-above-width", [*B, "--prompts", "emb.safetensors", "--lora-rank", "100000", "--out", "new"],
     "exceeds the width", {}),
    ("recipes-no-match", ["recipes", "nosuch"], "no recipe name contains 'nosuch'", {}),
    ("sample-n-zero", ["sample", "--model", "shipped", "--n", "0"], "--n must be >= 1", {}),
    ("masked-teacher-cfg-nan", ["sample", "--model", "mnist-binary/teacher", "--cfg", "nan"], "--cfg must be a finite",
     {}),
    ("resume-no-run", ["distill", "--resume", "--out", "empty"], "holds no run to resume", {}),
    ("resume-missing-folder", ["distill", "--resume", "--out", "nowhere"], "holds no run to resume", {}),
    # Also (before)
    ("plugin-takes-existing-name", ["list"], "name 'dmd' is taken", {"PDMD_PLUGINS": "pdmd_test_dup"}),
    ("plugin-fails-to-import", ["list"], "plugin module 'pdmd_test_broken'", {"PDMD_PLUGINS": "pdmd_test_broken"}),
    ("resume-phased-longer", None, "split over 4 phases", {}),  # filled in below: needs a phased run
    # Output policy, every writing command
    ("distill-into-notes", [*D, "--out", "notes"], "not empty", {}),
    ("distill-into-run-without-resume", [*D, "--out", "run"], "pass --resume to continue it", {}),
    ("distill-into-package", [*D, "--out", str(PACKAGE / "runs")], "inside the pdmd_lab package", {}),
    ("sample-into-package", ["sample", "--model", "shipped", "--out", str(PACKAGE / "x.png")], "inside the pdmd_lab",
     {}),
    ("sample-existing-file", ["sample", "--model", "shipped", "--out", "existing.png"], "already exists", {}),
    ("sample-onto-folder", ["sample", "--model", "shipped", "--out", "empty"], "must end in one of", {}),
    ("sample-bad-suffix", ["sample", "--model", "shipped", "--out", "x.txt"], "must end in one of", {}),
    ("evaluate-existing-metrics", ["evaluate", "--models", "ring-mix/dmd-1s", "--out", "evald"], "already exists", {}),
    ("figures-existing-figure", ["figures", "--family", "ring-mix", "--out", "figs"], "already exists", {}),
    ("figures-into-package", ["figures", "--family", "ring-mix", "--out", str(PACKAGE / "figs")], "inside the pdmd_lab",
     {}),
    ("study-into-notes", ["study", "--out", "notes"], "not empty", {}),
    ("study-into-package", ["study", "--out", str(PACKAGE / "st")], "inside the pdmd_lab", {}),
    ("bench-onto-file", ["bench", "--quick", "--out", "file.txt"], "existing file", {}),
    ("teacher-into-notes", ["train-teacher", "--data", "ring-mix", "--out", "notes"], "not empty", {}),
    ("classifier-into-package", ["train-classifier", "--out", str(PACKAGE / "clf")], "inside the pdmd_lab", {}),
    # Options of every subcommand
    ("distill-iters-zero", [*D, "--iters", "0", "--out", "new"], "--iters must be >= 1", {}),
    ("distill-batch-zero", [*D, "--batch-size", "0", "--out", "new"], "--batch-size must be >= 1", {}),
    ("distill-steps-zero", [*D, "--steps", "0", "--out", "new"], "--steps must be >= 1", {}),
    ("distill-shift-zero", [*D, "--shift", "0", "--out", "new"], "--shift must be > 0", {}),
    ("distill-lr-fake-zero", [*D, "--lr-fake", "0", "--out", "new"], "--lr-fake must be > 0", {}),
    ("distill-fake-updates-zero", [*D, "--fake-updates", "0", "--out", "new"], "--fake-updates must be >= 1", {}),
    ("distill-checkpoint-every-zero", [*D, "--checkpoint-every", "0", "--out", "new"], "--checkpoint-every must be",
     {}),
    ("distill-seed-negative", [*D, "--seed", "-1", "--out", "new"], "--seed must be >= 0", {}),
    ("distill-unknown-recipe", ["distill", "--recipe", "nosuch", "--out", "new"], "unknown recipe 'nosuch'", {}),
    ("distill-unknown-oracle", [*D, "--teacher", "oracle:nosuch", "--out", "new"], "nosuch", {}),
    ("distill-prompts-without-diffusers", [*D, "--prompts", "emb.safetensors", "--out", "new"],
     "--prompts applies to --teacher diffusers:PATH", {}),
    ("distill-lora-rank-zero", [*B, "--prompts", "emb.safetensors", "--lora-rank", "0", "--out", "new"],
     "LoRA rank must be a positive", {}),
    ("resume-other-method", ["distill", "--resume", "--method", "dmd2-sgts", "--out", "run"], "method='dmd'", {}),
    ("resume-other-cfg", ["distill", "--resume", "--cfg", "2", "--out", "run"], "cfg=", {}),
    ("resume-fewer-iters", ["distill", "--resume", "--iters", "1", "--out", "run"], "already run 2", {}),
    ("sample-unknown-model", ["sample", "--model", "nosuch/model"], "unknown model 'nosuch/model'", {}),
    ("sample-label-outside", ["sample", "--model", "shipped", "--label", "7"], "--label must be in [0, 3]", {}),
    ("sample-steps-zero", ["sample", "--model", "ring-mix/teacher", "--steps", "0"], "--steps must be >= 1", {}),
    ("sample-cfg-negative", ["sample", "--model", "ring-mix/teacher", "--cfg", "-1"], "--cfg must be >= 0", {}),
    ("sample-student-steps", ["sample", "--model", "shipped", "--steps", "8"], "distilled student", {}),
    ("evaluate-n-zero", ["evaluate", "--models", "ring-mix/dmd-1s", "--n", "0"], "--n must be >= 1", {}),
    ("evaluate-unknown-model", ["evaluate", "--models", "nosuch/model", "--n", "10"], "nosuch/model", {}),
    ("figures-n-zero", ["figures", "--family", "mnist", "--n", "0"], "--n must be >= 1", {}),
    ("figures-unknown-family", ["figures", "--family", "nosuch"], "nosuch", {}),
    ("figures-n-points-zero", ["figures", "--family", "ring-mix", "--per-exit", "--n-points", "0"],
     "--n-points must be >= 1", {}),
    ("teacher-unknown-data", ["train-teacher", "--data", "nosuch", "--out", "new"], "nosuch", {}),
    ("teacher-iters-zero", ["train-teacher", "--data", "ring-mix", "--iters", "0", "--out", "new"],
     "--iters must be >= 1", {}),
    ("teacher-lr-nan", ["train-teacher", "--data", "ring-mix", "--lr", "nan", "--out", "new"], "--lr must be a finite",
     {}),
    ("classifier-iters-zero", ["train-classifier", "--iters", "0", "--out", "new"], "--iters must be >= 1", {}),
    ("classifier-points", ["train-classifier", "--data", "ring-mix", "--out", "new"], "needs an image dataset", {}),
    ("study-n-zero", ["study", "--n", "0", "--out", "new"], "--n must be >= 1", {}),
    ("study-bad-seeds", ["study", "--seeds", "x", "--out", "new"], "bad --seeds", {}),
    ("study-unknown-row", ["study", "--rows", "nosuch*", "--out", "new"], "no recipe matches", {}),
    ("study-set-without-value", ["study", "--set", "iters", "--out", "new"], "--set expects key=value", {}),
    ("study-set-unknown-option", ["study", "--rows", "study/ring-mix/dmd-1s", "--set", "nosuch=1", "--out", "new"],
     "nosuch", {}),
    ("study-not-a-study", ["study", "--out", "studyx"], "not empty", {}),
    ("build-zoo-no-match", ["build-zoo", "--only", "nosuch"], "matches no zoo entry", {}),
    ("diversity-onto-file", ["diversity", "--models", "ring-mix/teacher,ring-mix/dmd-1s", "--out", "file.txt"],
     "existing file", {}),
    ("diversity-into-notes", ["diversity", "--models", "ring-mix/teacher,ring-mix/dmd-1s", "--out", "notes"],
     "not empty", {}),
    ("diversity-seeds-zero", ["diversity", "--models", "ring-mix/teacher,ring-mix/dmd-1s", "--seeds", "0",
                              "--out", "new"], "--seeds", {}),
    ("threads-negative", ["--threads", "-2", "list"], "--threads must be >= 1", {}),
    ("env-threads-zero", ["list"], "PDMD_THREADS must be a positive integer", {"PDMD_THREADS": "0"}),
    ("env-plugins-not-a-name", ["list"], "not a module name", {"PDMD_PLUGINS": "my plugin!"}),
    ("env-cache-is-a-file", [*D, "--out", "new"], "PDMD_CACHE", {"PDMD_CACHE": "file.txt"}),
]


@pytest.fixture(scope="module")
def phased_run(world):
    """A finished 2-phase run (for the resume case that cannot extend it)."""
    mp = pytest.MonkeyPatch()
    mp.chdir(world["root"])
    mp.setenv("PDMD_CACHE", str(world["cache"]))
    try:
        assert main([*D[:4], "phased-dmd", *D[5:], "--steps", "4", "--phases", "4", "--iters", "4",
                     "--out", "phased"]) == 0
    finally:
        mp.undo()
    return ["distill", "--resume", "--iters", "8", "--out", "phased"]


def test_table_has_every_class(world):
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(world, phased_run, case, monkeypatch, capsys):
    name, argv, msg, env = case
    argv = phased_run if argv is None else argv
    root = world["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("PDMD_CACHE", str(world["cache"]))
    monkeypatch.delenv("PDMD_THREADS", raising=False)
    monkeypatch.delenv("PDMD_PLUGINS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(root / "plugins"))
    before, package = snapshot(root), package_files()
    code, _, err = run_cli(capsys, argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    assert lines[0].startswith("pdmd-lab"), err
    assert msg in err, err
    assert snapshot(root) == before  # nothing written, moved or deleted
    assert package_files() == package


# What the kit may do, and where ---------------------------------------------------------------------------

def test_no_command_writes_inside_the_package_and_defaults_go_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    package, assets = package_files(), snapshot(ASSETS / "models")
    for argv in (["sample", "--model", "ring-mix/dmd-1s", "--n", "8"],
                 ["figures", "--family", "ring-mix"],
                 ["evaluate", "--models", "ring-mix/dmd-1s", "--n", "64", "--out", "runs/eval"]):
        code, _, err = run_cli(capsys, argv)
        assert code == 0, err
    assert (tmp_path / "runs" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "figures" / "ring-mix_methods_scatter.png").stat().st_size > 1000
    assert json.loads((tmp_path / "runs" / "eval" / "metrics.json").read_text())["rows"]
    assert package_files() == package and snapshot(ASSETS / "models") == assets
    # The same figure again is refused; --overwrite replaces it.
    code, _, err = run_cli(capsys, ["figures", "--family", "ring-mix"])
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, ["figures", "--family", "ring-mix", "--overwrite"])
    assert code == 0, err


def test_sample_creates_the_folder_and_keeps_an_existing_file(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "s.png"
    argv = ["sample", "--model", "ring-mix/dmd-1s", "--n", "8", "--out", out]
    assert run_cli(capsys, argv)[0] == 0
    first = out.read_bytes()
    code, _, err = run_cli(capsys, [*argv[:-2], "--seed", "1", "--out", out])
    assert code == 2 and "--overwrite" in err and out.read_bytes() == first
    assert run_cli(capsys, [*argv[:-2], "--seed", "1", "--out", out, "--overwrite"])[0] == 0
    assert out.read_bytes() != first


def test_overwrite_replaces_a_run_the_kit_wrote(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PDMD_CACHE", str(world["cache"]))
    out = tmp_path / "r"
    assert run_cli(capsys, [*D, "--out", out])[0] == 0
    old = (out / "expert_0.safetensors").read_bytes()
    code, _, err = run_cli(capsys, [*D, "--seed", "3", "--overwrite", "--out", out])
    assert code == 0, err
    assert (out / "expert_0.safetensors").read_bytes() != old and io.read_config(out)["seed"] == 3
    assert len([line for line in (out / "log.jsonl").read_text().splitlines() if line]) == 1  # the new run's log


def test_atomic_folder_never_replaces_a_file_or_a_foreign_folder(tmp_path):
    (tmp_path / "f").write_text("mine")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    for target in ("f", "d"):
        with pytest.raises(ValueError, match="the kit"):
            io.save_folder(tmp_path / target, {"kind": "classifier"}, {"model": {"w": torch.zeros(1)}})
    assert (tmp_path / "f").read_text() == "mine" and (tmp_path / "d" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]  # nothing moved aside


def test_backbone_students_in_list_sample_and_evaluate(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(world["root"])
    monkeypatch.setenv("PDMD_CACHE", str(world["cache"]))
    assert run_cli(capsys, ["list"])[0] == 0
    full = tmp_path / "full"
    code, _, err = run_cli(capsys, [*B, "--prompts", "emb.safetensors", "--experts", "full", "--out", full])
    assert code == 0, err
    for model in ("lora", full):
        assert safety.kit_kind(model) in ("lora-student", "backbone-student")
        out = tmp_path / f"{Path(model).name}.safetensors"
        code, _, err = run_cli(capsys, ["sample", "--model", model, "--n", "3", "--out", out])
        assert code == 0, err
        t = load_file(str(out))
        assert t["samples"].shape == (3, 4, 8, 8) and t["labels"].tolist() == [0, 1, 0]
        assert torch.isfinite(t["samples"]).all()
        ev = tmp_path / f"eval-{Path(model).name}"
        code, out_text, err = run_cli(capsys, ["evaluate", "--models", model, "--n", "4", "--out", ev])
        assert code == 0, err
        m = json.loads((ev / "metrics.json").read_text())["rows"][str(model)]
        assert m["nfe"] == 1 and m["shape"] == [4, 8, 8] and m["finite"] and m["within_prompt_distance"] > 0
        assert load_file(str(ev / "latents.safetensors"))["0.samples"].shape == (4, 4, 8, 8)


def test_safety_paragraph_is_written():
    text = (ROOT / "docs" / "safety.md").read_text()
    for promise in ("--overwrite", "./runs/", "new, empty", "never deletes or moves"):
        assert promise in text


def test_environment_variables_are_parsed(monkeypatch, tmp_path):
    monkeypatch.setenv("PDMD_THREADS", " 3 ")
    assert safety.env_threads() == 3
    monkeypatch.setenv("PDMD_THREADS", "")
    assert safety.env_threads() is None
    monkeypatch.setenv("PDMD_PLUGINS", "a.b, c ,")
    assert safety.env_plugins() == ["a.b", "c"]
    monkeypatch.setenv("PDMD_CACHE", str(tmp_path / "c"))
    assert safety.env_cache() == tmp_path / "c"
    monkeypatch.delenv("PDMD_CACHE")
    assert safety.env_cache() == Path.home() / ".cache" / "pdmd_lab"
    assert os.environ.get("PDMD_CACHE") is None


def test_a_plugin_may_take_a_name_only_when_it_says_so():
    from pdmd_lab.distill import METHODS, Draw, Rollout, flow, register_method
    from pdmd_lab.distill.methods import DMD

    with pytest.raises(ValueError, match="name 'dmd' is taken"):
        register_method(type("MyDMD", (DMD,), {"name": "dmd"}))
    assert METHODS["dmd"] is DMD
    mine = type("MyDMD", (DMD,), {"name": "dmd", "replaces": True})
    try:
        assert register_method(mine) is mine and METHODS["dmd"] is mine
    finally:
        METHODS["dmd"] = DMD
    # What a method needs is exported: a rollout, draws, and the flow helpers.
    assert Rollout(torch.zeros(2, 2), 0.0).exit_step == 0 and callable(flow.add_noise)
    per_rank = [Draw(torch.Generator().manual_seed(5), 8, rank, 2) for rank in (0, 1)]
    shared = [d.uniform(0.2, 0.4) for d in per_rank]
    assert shared[0] == shared[1] and 0.2 <= shared[0] < 0.4  # the same float on every process


def test_heartbeat_speaks_during_a_long_step_and_not_after():
    import io as stdio
    import time

    from pdmd_lab.progress import heartbeat

    out = stdio.StringIO()
    with heartbeat("fitting the starting net", every=0.01, stream=out):
        deadline = time.time() + 10
        while "still working" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.01)  # a long step
    said = out.getvalue()
    assert said.startswith("fitting the starting net: still working (")
    time.sleep(0.05)
    assert out.getvalue() == said  # stopped with the step
    quiet = stdio.StringIO()
    with heartbeat("short", every=60, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_a_run_stopped_before_its_first_checkpoint_can_be_replaced(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "log.jsonl").write_text('{"iter": 10}\n')
    code, _, err = run_cli(capsys, [*D, "--out", out])
    assert code == 2 and "the log of a run stopped before its first checkpoint" in err and "--overwrite" in err
    (tmp_path / "mine").mkdir()
    for name in ("log.jsonl", "weights.safetensors"):  # a log beside a file of the user's: not the kit's folder
        (tmp_path / "mine" / name).write_text("x")
    code, _, err = run_cli(capsys, [*D, "--overwrite", "--out", tmp_path / "mine"])
    assert code == 2 and "did not write (weights.safetensors)" in err
    assert safety.foreign_entries(out) == [] and (out / "log.jsonl").is_file()
    safety.clear_kit_folder(out)
    assert list(out.iterdir()) == []


def test_an_interrupt_names_a_checkpoint_only_if_there_is_one(world, tmp_path, monkeypatch, capsys):
    import pdmd_lab.cli as cli

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_distill", interrupted)
    code, _, err = run_cli(capsys, [*D, "--out", tmp_path / "new"])
    assert code == 130 and err.strip() == "pdmd-lab distill: interrupted"
    code, _, err = run_cli(capsys, ["distill", "--resume", "--out", world["root"] / "run"])
    assert code == 130 and "the last checkpoint in" in err


def test_resume_compares_a_diffusers_teacher_path_normalised(world, tmp_path, monkeypatch, capsys):
    root = world["root"]
    shutil.copytree(root / "lora", tmp_path / "lora")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PDMD_CACHE", str(world["cache"]))
    assert json.loads((tmp_path / "lora" / "train_state" / "config.json").read_text())["config"]["teacher"] == \
        "diffusers:tiny-sd3"
    absolute = f"diffusers:{root / 'tiny-sd3'}"
    argv = ["distill", "--resume", "--teacher", absolute, "--iters", "2", "--out", tmp_path / "lora"]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert io.read_config(tmp_path / "lora")["iters"] == 2
    code, _, err = run_cli(capsys, ["distill", "--resume", "--lora-rank", "4", "--out", tmp_path / "lora"])
    assert code == 2 and "net.lora_rank=2, not 4" in err


def test_overwrite_keeps_its_hands_off_a_users_file_inside_a_run(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["root"] / "run", run)
    (run / "my_weights.safetensors").write_bytes(b"the user's")
    code, _, err = run_cli(capsys, [*D, "--overwrite", "--out", run])
    assert code == 2 and "did not write (my_weights.safetensors)" in err
    assert (run / "my_weights.safetensors").read_bytes() == b"the user's" and (run / "train_state").is_dir()
    assert safety.foreign_entries(world["root"] / "lora") == []  # every file of a LoRA run is the kit's

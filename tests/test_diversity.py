"""``pdmd-lab diversity``: the paper's diversity and motion protocol on tiny SD3 and Wan pipelines, end to end.

Tiny random feature models (``Dinov2Model``, ``CLIPVisionModel``, a ``CLIPModel`` with its text tower) are
written with ``save_pretrained`` and read back through ``AutoModel`` / ``AutoImageProcessor``; the
pipelines are the stock diffusers classes with tiny transformers and VAEs. Known answers: identical images
give cosine 1 and Vendi 1, ``k`` orthogonal features Vendi ``k``.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from pdmd_lab import diversity as dv
from pdmd_lab import io
from pdmd_lab import opticalflow as of
from pdmd_lab.backbones.tiny import random_prompts, save_tiny, save_tiny_features, save_tiny_pipeline
from pdmd_lab.cli import main


def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Tiny random feature models: DINOv2, a CLIP vision tower, a CLIP model with text tower and tokenizer."""
    root = tmp_path_factory.mktemp("features")
    for kind, name in (("dinov2", "dino"), ("clip-vision", "clip-vision"), ("clip", "clip")):
        save_tiny_features(kind, root / name)
    return root


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """A tiny SD3 pipeline folder with a VAE, an embeddings file of 2 prompts, and a LoRA student distilled
    from it (2 phases, 2 iterations) through ``pdmd-lab distill``."""
    root = tmp_path_factory.mktemp("sd3")
    save_tiny_pipeline("sd3", root / "pipe")
    random_prompts("sd3", 2).save(root / "prompts.safetensors")
    code = main(["distill", "--teacher", f"diffusers:{root / 'pipe'}", "--method", "phased-dmd", "--steps", "2",
                 "--phases", "2", "--iters", "2", "--batch-size", "2", "--fake-updates", "1", "--lr", "1e-2",
                 "--prompts", str(root / "prompts.safetensors"), "--lora-rank", "4", "--latent-shape", "4,8,8",
                 "--cfg", "3", "--out", str(root / "student")])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny Wan pipeline folder (UMT5 text encoder, VAE), a prompts text file, a full-weight student."""
    root = tmp_path_factory.mktemp("wan")
    save_tiny_pipeline("wan", root / "pipe", text_encoder=True)
    (root / "prompts.txt").write_text("# two prompts\na red cat runs\n\na blue car on the street\n")
    code = main(["distill", "--teacher", f"diffusers:{root / 'pipe'}", "--method", "phased-dmd", "--steps", "2",
                 "--phases", "2", "--iters", "2", "--batch-size", "2", "--fake-updates", "1", "--lr", "1e-2",
                 "--prompts", str(root / "prompts.txt"), "--max-sequence-length", "8", "--experts", "full",
                 "--latent-shape", "16,2,4,4", "--cfg", "3", "--out", str(root / "student")])
    assert code == 0
    return root


# Known answers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dino", "clip-vision", "clip"])
def test_identical_images_cosine_1_vendi_1(features, name):
    fm = dv.FeatureModel(features / name)
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    f = fm.embed_images(image.expand(5, -1, -1, -1))
    assert f.shape[0] == 5 and f.ndim == 2
    s = dv.diversity_scores(f)
    assert s["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert s["vendi"] == pytest.approx(1.0, abs=1e-3)
    assert dv.teacher_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert fm.has_text == (name == "clip")
    different = fm.embed_images(torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1)))
    assert dv.diversity_scores(different)["cosine"] < 1 - 1e-4  # the features do see the images


@pytest.mark.parametrize("k", [2, 3, 7])
def test_k_orthogonal_features_vendi_k(k):
    f = torch.eye(k) * torch.arange(1.0, k + 1)[:, None]  # orthogonal, different lengths
    s = dv.diversity_scores(f)
    assert s["vendi"] == pytest.approx(k, rel=1e-6)
    assert s["cosine"] == pytest.approx(0.0, abs=1e-9)
    two = torch.cat([f, f])  # each direction twice: still k
    assert dv.diversity_scores(two)["vendi"] == pytest.approx(k, rel=1e-6)


def test_clip_score_distance_and_clip_embedding():
    e = torch.eye(3)
    assert dv.clip_score(e[:1].repeat(4, 1), e[0]) == pytest.approx(100.0)
    assert dv.clip_score(e[1:2], e[0]) == 0.0
    assert dv.clip_score(-e[:1], e[0]) == 0.0  # negative cosine counts as 0 (CLIPScore)
    assert dv.teacher_distance(e[:2], e[[0, 2]]) == pytest.approx(0.5)
    frames = torch.stack([e[:2] * 3, e[:2]], 1)  # two clips of two frames, (2, 2, 3): clip 0 = e0, e0 ...
    assert torch.allclose(dv.clip_embedding(frames), e[:2])


# End to end ------------------------------------------------------------------------------------------------

def test_sd3_end_to_end(sd3, features, tmp_path, capsys):
    """Teacher at 4 steps with CFG 3 and a LoRA student; same noise per seed; numbers recomputed by hand."""
    from pdmd_lab.backbones.pipelines import decode_latents, load_vae

    out = tmp_path / "div"
    code, stdout, err = run_cli(capsys, "diversity", "--models", f"diffusers:{sd3 / 'pipe'},{sd3 / 'student'}",
                                "--prompts", sd3 / "prompts.safetensors", "--features", features / "dino", "--clip",
                                features / "clip", "--seeds", 4, "--teacher-steps", 4, "--teacher-cfg", 3,
                                "--quiet", "--out", out)
    assert code == 0, err
    res = json.loads((out / "diversity.json").read_text())
    teacher, student = f"diffusers:{sd3 / 'pipe'}", str(sd3 / "student")
    assert res["models"][teacher] == {"kind": "teacher", "steps": 4, "cfg": 3.0, "shift": 3.0,
                                      "base": str(sd3 / "pipe"), "nfe": 8}
    assert res["models"][student]["kind"] == "student" and res["models"][student]["nfe"] == 2
    assert res["seeds"] == [0, 1, 2, 3] and res["prompts"] == ["prompt 0", "prompt 1"]
    assert len(res["per_prompt"]) == 4 and res["video"] is None and "skipped" in res["lpips"]
    for rec in res["per_prompt"]:
        assert -1 <= rec["cosine"] <= 1 and 1 - 1e-6 <= rec["vendi"] <= 4 and 0 <= rec["clip_score"] <= 100
        if rec["model"] == teacher:
            assert rec["teacher_distance"] == pytest.approx(0.0, abs=1e-9)
        else:  # 2 student steps without CFG against 4 teacher steps with CFG 3: not the same images
            assert rec["teacher_distance"] > 1e-9

    # The student's cosine for prompt 1, recomputed: same noise, its own sampler, the pipeline's VAE, DINOv2.
    z = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(4)])
    x = decode_latents(load_vae(sd3 / "pipe"), io.load_folder(sd3 / "student").sample([1] * 4, noise=z))
    f = dv.FeatureModel(features / "dino").embed_images(x)
    rec = next(r for r in res["per_prompt"] if r["model"] == student and r["prompt_index"] == 1)
    assert rec["cosine"] == pytest.approx(dv.diversity_scores(f)["cosine"], abs=1e-6)
    assert rec["vendi"] == pytest.approx(dv.diversity_scores(f)["vendi"], abs=1e-5)

    # Tables and contact sheets.
    stat = res["summary"][student]["cosine"]
    values = [r["cosine"] for r in res["per_prompt"] if r["model"] == student]
    assert stat["mean"] == pytest.approx(sum(values) / 2)
    assert stat["ci95"] == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)  # t(1) * s / sqrt(2)
    with open(out / "diversity.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 4 and {"model", "prompt", "cosine", "vendi", "teacher_distance", "clip_score"} <= set(lines[0])
    md = (out / "diversity.md").read_text()
    assert "Dinov2Model cosine ↓" in md and "CLIP score ↑" in md and "LPIPS" in md and md in stdout
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["prompt_0.png", "prompt_1.png"]
    from PIL import Image

    assert Image.open(out / "sheets" / "prompt_0.png").size[0] > 100

    # The same folder again is refused (nothing overwritten).
    code, _, err = run_cli(capsys, "diversity", "--models", teacher, "--prompts", sd3 / "prompts.safetensors",
                           "--features", features / "dino", "--out", out)
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1


def test_wan_end_to_end(wan, features, tmp_path, capsys):
    """Video: prompts encoded by the pipeline's text encoder, clips decoded, per-clip Farneback flow."""
    from pdmd_lab.backbones.pipelines import decode_latents, load_vae

    out = tmp_path / "div"
    code, stdout, err = run_cli(capsys, "diversity", "--models", f"diffusers:{wan / 'pipe'}@3,{wan / 'student'}",
                                "--prompts", wan / "prompts.txt", "--features", features / "clip-vision", "--seeds",
                                3, "--teacher-cfg", 4, "--max-sequence-length", 8, "--quiet", "--out", out)
    assert code == 0, err
    res = json.loads((out / "diversity.json").read_text())
    teacher = f"diffusers:{wan / 'pipe'}@3"
    assert res["models"][teacher]["steps"] == 3 and res["models"][teacher]["cfg"] == 4.0
    assert res["prompts"] == ["a red cat runs", "a blue car on the street"] and res["clip"] is None
    assert res["video"]["dynamic_threshold"] == pytest.approx(6 * 32 / 256)
    for rec in res["per_prompt"]:
        assert rec["mean_flow"] >= 0 and rec["dynamic_degree"] in (0.0, 1 / 3, 2 / 3, 1.0)
    student = str(wan / "student")
    z = torch.stack([torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    clips = decode_latents(load_vae(wan / "pipe"), io.load_folder(wan / "student").sample([0] * 3, noise=z))
    assert clips.shape == (3, 3, 5, 32, 32)
    flows = [of.mean_flow(of.clip_frames(c)) for c in clips]
    rec = next(r for r in res["per_prompt"] if r["model"] == student and r["prompt_index"] == 0)
    assert rec["mean_flow"] == pytest.approx(sum(flows) / 3, abs=1e-6)
    md = (out / "diversity.md").read_text()
    assert "mean optical flow (px/frame)" in md and "dynamic degree" in md and "CLIP score" not in md


def test_bad_input_one_line_exit_2(sd3, features, tmp_path, capsys):
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-processor").mkdir()
    (tmp_path / "no-processor" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    save_tiny("sd3", tmp_path / "transformer-only")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    teacher, prompts = f"diffusers:{sd3 / 'pipe'}", sd3 / "prompts.safetensors"
    ok = ["--prompts", prompts, "--features", features / "dino", "--teacher-steps", 2]
    cases = [
        (["--models", teacher, "--prompts", prompts, "--features", tmp_path / "no-model"], "holds no model"),
        (["--models", teacher, "--prompts", prompts, "--features", tmp_path / "no-processor"], "no image processor"),
        (["--models", teacher, "--prompts", tmp_path / "empty.txt", "--features", features / "dino"],
         "holds no prompts"),
        (["--models", teacher, *ok, "--seeds", 1], "--seeds must be >= 2"),
        (["--models", f"diffusers:{tmp_path / 'transformer-only'}", *ok], "has no VAE"),
        (["--models", f"{teacher},{sd3 / 'student'}", *ok, "--vae", tmp_path / "transformer-only"], "has no VAE"),
        (["--models", teacher, "--prompts", prompts], "--features PATH is needed"),
        (["--models", teacher, *ok, "--clip", features / "dino"], "no text tower"),
        (["--models", f"{teacher},mnist/teacher", *ok], "not a backbone student folder"),
        (["--models", teacher, *ok, "--teacher-cfg", "nan"], "--teacher-cfg must be"),
        (["--models", teacher, *ok, "--latent-shape", "4,x"], "--latent-shape must be integers"),
        (["--models", teacher, *ok, "--dtype", "half"], "--dtype must be one of"),
        (["--models", teacher, *ok, "--device", "gpu0"], "is not a torch device"),
    ]
    for extra, msg in cases:
        code, _, err = run_cli(capsys, "diversity", *extra, "--out", tmp_path / "out")
        assert code == 2, (extra, err)
        assert msg in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / "out").exists()  # refused before anything is written
    code, _, err = run_cli(capsys, "diversity", "--models", teacher, *ok, "--out", tmp_path / "taken")
    assert code == 2 and "not empty" in err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# pdmd-lab sample: backbone students decoded with the local VAE -----------------------------------------------

def test_sample_decodes_backbone_students(sd3, wan, tmp_path, capsys):
    """A LoRA SD3 student to a PNG grid, a full-weight Wan student to a GIF (5 frames, clips side by side) and
    a PNG of frames; latents to .safetensors; a folder without a VAE is one line, exit 2, nothing written."""
    from PIL import Image
    from safetensors.torch import load_file

    code, out, err = run_cli(capsys, "sample", "--model", sd3 / "student", "--n", 4, "--out", tmp_path / "s.png")
    assert code == 0, err
    assert f"decoded with the VAE of {sd3 / 'pipe'}" in out and Image.open(tmp_path / "s.png").size[0] > 50
    code, out, err = run_cli(capsys, "sample", "--model", wan / "student", "--n", 3, "--out", tmp_path / "w.gif")
    assert code == 0, err
    gif = Image.open(tmp_path / "w.gif")
    assert gif.n_frames == 5 and gif.size == (3 * 32 + 2 * 2, 32)  # 5 decoded frames of 32x32, 2-px gaps
    code, _, err = run_cli(capsys, "sample", "--model", wan / "student", "--n", 2, "--out", tmp_path / "w.png")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", "--model", sd3 / "student", "--n", 4, "--out", tmp_path / "l.safetensors")
    assert code == 0, err
    saved = load_file(str(tmp_path / "l.safetensors"))
    z = io.load_folder(sd3 / "student").sample(torch.arange(4) % 2, seed=0)
    assert saved["samples"].shape == (4, 4, 8, 8) and torch.allclose(saved["samples"], z, atol=1e-6)

    save_tiny("sd3", tmp_path / "no-vae")
    cases = [(["--model", sd3 / "student", "--vae", tmp_path / "no-vae", "--out", tmp_path / "x.png"], "has no VAE"),
             (["--model", sd3 / "student", "--out", tmp_path / "x.gif"], "a GIF is for video models"),
             (["--model", "mnist/teacher", "--out", tmp_path / "x.gif"], "apply to models of diffusers backbones")]
    for args, msg in cases:
        code, _, err = run_cli(capsys, "sample", *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "x.png").exists()


# Kit datasets through the same command ---------------------------------------------------------------------

def test_kit_images_use_their_classifier(tmp_path, capsys):
    """MNIST models: classes from a prompts file of class indices, features from the shipped classifier."""
    from pdmd_lab import zoo
    from pdmd_lab.embed import embed, load_classifier

    (tmp_path / "classes.txt").write_text("3\n7\n")
    out = tmp_path / "div"
    code, stdout, err = run_cli(capsys, "diversity", "--models", "mnist/teacher@4,mnist/dmd-1s", "--prompts",
                                tmp_path / "classes.txt", "--seeds", 3, "--quiet", "--out", out)
    assert code == 0, err
    res = json.loads((out / "diversity.json").read_text())
    assert res["prompts"] == ["class 3", "class 7"] and res["features"]["model"] == "mnist classifier"
    z = dv._noise((1, 28, 28), [0, 1, 2])
    x = zoo.load("mnist/dmd-1s").sample([7] * 3, noise=z)
    f = embed(load_classifier(zoo.ASSETS / "mnist" / "classifier"), x.clamp(-1, 1))  # images as shown
    rec = next(r for r in res["per_prompt"] if r["model"] == "mnist/dmd-1s" and r["prompt"] == "class 7")
    assert rec["cosine"] == pytest.approx(dv.diversity_scores(f)["cosine"], abs=1e-5)
    assert (out / "sheets" / "prompt_1.png").is_file()
    (tmp_path / "bad.txt").write_text("3\n12\n")
    code, _, err = run_cli(capsys, "diversity", "--models", "mnist/teacher@4", "--prompts", tmp_path / "bad.txt",
                           "--out", tmp_path / "x")
    assert code == 2 and "class 12 is out of range" in err


def test_motion_mix_flow_beside_exact_displacement(tmp_path, capsys):
    """motion-mix clips drawn as frames: Farneback's estimate beside the exact mean |p_(f+1) - p_f|."""
    from pdmd_lab import motion, zoo

    out = tmp_path / "mm"
    (tmp_path / "classes.txt").write_text("2\n")  # one direction keeps the test short
    code, stdout, err = run_cli(capsys, "diversity", "--models", "motion-mix/teacher@4,motion-mix/teacher@1",
                                "--prompts", tmp_path / "classes.txt", "--seeds", 3, "--quiet", "--out", out)
    assert code == 0, err
    res = json.loads((out / "diversity.json").read_text())
    ppu = res["frames"]["pixels_per_unit"]
    assert ppu == pytest.approx(128 / 24)
    z = dv._noise((16,), [0, 1, 2])
    x = zoo.load("motion-mix/teacher@4").sample([2] * 3, noise=z)
    rec = next(r for r in res["per_prompt"] if r["model"] == "motion-mix/teacher@4" and r["prompt_index"] == 2)
    assert rec["exact"] == pytest.approx(float(motion.per_sample_flow(x).mean()) * ppu, rel=1e-5)
    for row in res["summary"].values():
        assert row["pan_rel_error"] < 0.1  # a textured pan: Farneback within 10% of the exact displacement
        assert row["dot_interior"]["mean"] < row["dot_object"]["mean"]  # the still background dilutes it
    assert "Farneback, dot" in stdout and "exact" in stdout


@pytest.mark.parametrize("kind,shape,extra", [("flux", "1,8,8", ["--teacher-guidance", 3.5]), ("qwen", "4,8,8", [])])
def test_flux_and_qwen_teachers_decode(kind, shape, extra, features, tmp_path, capsys):
    """The other image backbones: a teacher row decoded with its own VAE (Flux-dev's embedded guidance given)."""
    save_tiny_pipeline(kind, tmp_path / "pipe", shift=1.0)
    random_prompts(kind, 2).save(tmp_path / "prompts.safetensors")
    args = ["diversity", "--models", f"diffusers:{tmp_path / 'pipe'}", "--prompts", tmp_path / "prompts.safetensors",
            "--features", features / "dino", "--seeds", 2, "--teacher-steps", 2, "--teacher-cfg", 2,
            "--latent-shape", shape, "--quiet"]
    code, _, err = run_cli(capsys, *args, *extra, "--out", tmp_path / "div")
    assert code == 0, err
    res = json.loads((tmp_path / "div" / "diversity.json").read_text())
    assert res["models"][f"diffusers:{tmp_path / 'pipe'}"]["shift"] == 1.0 and len(res["per_prompt"]) == 2
    if kind == "flux":  # without its embedded guidance a guidance-distilled Flux is refused
        code, _, err = run_cli(capsys, *args, "--out", tmp_path / "div2")
        assert code == 2 and "guidance" in err

"""Real backbones on CPU: tiny random configs of diffusers' SD3, Flux, Wan and Qwen-Image transformers.

Each model is written with ``save_pretrained`` and loaded back from its folder, as a real one would be.
The adapters are checked against the stock diffusers pipelines (same noise, sigmas and guidance), then
Phased DMD with LoRA experts runs through the kit's trainer, and the student goes back into the pipeline.
"""

from __future__ import annotations

import json

import pytest
import torch

from pdmd_lab import flow, io
from pdmd_lab.backbones import LoRAConfig, LoRAExperts, LoRAStudent, PromptEmbeddings, load_backbone
from pdmd_lab.backbones.adapters import pack_latents, unpack_latents
from pdmd_lab.backbones.pipelines import run_student, wan_two_expert_pipeline
from pdmd_lab.backbones.prompts import encode_prompts, read_prompts
from pdmd_lab.backbones.tiny import TINY_LATENTS, random_prompts, save_tiny, tiny_model
from pdmd_lab.cli import main
from pdmd_lab.distill import DistillConfig, build_distiller
from pdmd_lab.sampling import sample_euler

KINDS = ("sd3", "flux", "wan", "qwen")
GUIDANCE = {"flux": 3.5}  # the tiny Flux embeds guidance, like Flux-dev


# Helpers: the stock pipelines with no text encoders or VAE, and their arguments ---------------------

def make_pipeline(kind, transformer, scheduler, **extra):
    from diffusers import FluxPipeline, QwenImagePipeline, StableDiffusion3Pipeline, WanPipeline

    none = {"vae": None, "text_encoder": None, "tokenizer": None, **extra}
    if kind == "sd3":
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, **none, text_encoder_2=None,
                                        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    elif kind == "flux":
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, **none, text_encoder_2=None, tokenizer_2=None)
    elif kind == "wan":
        pipe = WanPipeline(transformer=transformer, scheduler=scheduler, **none)
    else:
        pipe = QwenImagePipeline(transformer=transformer, scheduler=scheduler, **none)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_inputs(kind, prompts: PromptEmbeddings, labels, z, *, negative: bool) -> dict:
    """Prompt tensors, latents and sizes as the pipeline of ``kind`` takes them (``negative``: empty prompt)."""
    cond = prompts.gather(torch.as_tensor(labels))
    kw = {"prompt_embeds": cond["prompt_embeds"], "output_type": "latent"}
    if "pooled_prompt_embeds" in cond:
        kw["pooled_prompt_embeds"] = cond["pooled_prompt_embeds"]
    if kind == "qwen":
        kw["prompt_embeds_mask"] = cond["prompt_embeds_mask"]
    if negative:
        null = prompts.gather(torch.full((len(labels),), prompts.num_prompts))
        kw["negative_prompt_embeds"] = null["prompt_embeds"]
        if "pooled_prompt_embeds" in null:
            kw["negative_pooled_prompt_embeds"] = null["pooled_prompt_embeds"]
        if kind == "qwen":
            kw["negative_prompt_embeds_mask"] = null["prompt_embeds_mask"]
    h, w = z.shape[-2:]
    kw.update(height=8 * h, width=8 * w)
    if kind in ("flux", "qwen"):
        kw["latents"] = pack_latents(z.clone())
    else:
        kw["latents"] = z.clone()
    if kind == "wan":
        kw["num_frames"] = 4 * (z.shape[2] - 1) + 1
    return kw


def pipeline_latents(kind, out, z):
    x = out.frames if kind == "wan" else out.images
    return unpack_latents(x, *z.shape[-2:]) if kind in ("flux", "qwen") else x


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny transformer and a random prompt table (2 prompts + the empty one) per backbone."""
    root = tmp_path_factory.mktemp("backbones")
    out = {}
    for kind in KINDS:
        save_tiny(kind, root / kind)
        random_prompts(kind).save(root / f"{kind}-prompts.safetensors")
        out[kind] = (root / kind, root / f"{kind}-prompts.safetensors")
    return out


def load(folders, kind):
    path, prompts = folders[kind]
    return load_backbone(path, PromptEmbeddings.load(prompts), latent_shape=TINY_LATENTS[kind],
                         guidance=GUIDANCE.get(kind))


def noise(kind, n=1, seed=0):
    return torch.randn(n, *TINY_LATENTS[kind], generator=torch.Generator().manual_seed(seed))


# 1. Conventions: the adapter's teacher reproduces the stock pipeline -------------------------------------

@pytest.mark.parametrize("kind,cfg,shift", [("sd3", 4.0, 3.0), ("flux", 2.0, 1.0), ("wan", 5.0, 5.0),
                                            ("qwen", 1.0, 1.0)])
def test_teacher_matches_pipeline(folders, kind, cfg, shift):
    """4 Euler steps with CFG (Flux: true CFG plus embedded guidance 3.5) equal the pipeline's latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    net = load(folders, kind)
    pipe = make_pipeline(kind, net.transformer, FlowMatchEulerDiscreteScheduler(shift=shift))
    z = noise(kind)
    guidance = {"true_cfg_scale": cfg} if kind in ("flux", "qwen") else {"guidance_scale": cfg}
    if kind == "flux":
        guidance["guidance_scale"] = GUIDANCE["flux"]
    out = pipe(num_inference_steps=4, **guidance, **pipeline_inputs(kind, net.prompts, [1], z, negative=cfg > 1))
    ref = pipeline_latents(kind, out, z)
    x = sample_euler(net, z, pipe.scheduler.sigmas.double(), class_labels=[1], cfg=cfg)
    assert pipe.scheduler.sigmas[0] == 1 and pipe.scheduler.sigmas[-1] == 0 and len(pipe.scheduler.sigmas) == 5
    assert ref.abs().max() > 1  # latents, not zeros
    assert (x - ref).abs().max() < 1e-5


def test_qwen_cfg_matches_pipeline_with_its_renormalisation(folders):
    """Qwen-Image rescales CFG to the conditional norm per token; ``combine_cfg`` reproduces it, and the
    kit's standard CFG (used for training) differs from it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    net = load(folders, "qwen")
    pipe = make_pipeline("qwen", net.transformer, FlowMatchEulerDiscreteScheduler())
    z = noise("qwen")
    out = pipe(num_inference_steps=4, true_cfg_scale=4.0, **pipeline_inputs("qwen", net.prompts, [1], z, negative=True))
    ref = pipeline_latents("qwen", out, z)

    def pipeline_cfg(x, t, labels):
        return net.combine_cfg(net(x, t, None), net(x, t, labels), 4.0)

    x = sample_euler(pipeline_cfg, z, pipe.scheduler.sigmas.double(), class_labels=[1])
    assert (x - ref).abs().max() < 1e-5
    standard = sample_euler(net, z, pipe.scheduler.sigmas.double(), class_labels=[1], cfg=4.0)
    assert (standard - ref).abs().max() > 1e-3


def test_padded_prompts_and_cond_dict(folders):
    """A cond dict passed directly equals the label path; Qwen's padded text gives the unpadded result."""
    net = load(folders, "qwen")
    z = noise("qwen", 2)
    v = net(z, 0.7, torch.tensor([1, 2]))
    v_dict = net(z, 0.7, net.prompts.gather(torch.tensor([1, 2])))
    assert torch.equal(v, v_dict)
    row = net.prompts.row(1)
    n = int(row["prompt_embeds_mask"].sum())
    assert n < row["prompt_embeds"].shape[1]  # prompt 1 is padded in the table
    v_trim = net(z[:1], 0.7, {"prompt_embeds": row["prompt_embeds"][:, :n], "prompt_embeds_mask": None})
    assert (v_trim - v[:1]).abs().max() < 1e-5


def test_vae_decodes_like_the_pipeline(folders, tmp_path):
    """Samples are decoded for figures with the pipeline folder's own VAE, exactly as the pipeline does."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from pdmd_lab.backbones.pipelines import decode_latents, load_vae

    net = load(folders, "sd3")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=4,
                        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                        scaling_factor=1.5035)
    pipe = make_pipeline("sd3", net.transformer, FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae)
    pipe.save_pretrained(tmp_path / "pipe")
    z = noise("sd3")
    kw = pipeline_inputs("sd3", net.prompts, [0], z, negative=True)
    kw.update(output_type="pt", height=8, width=8)  # this VAE does not downsample
    images = pipe(num_inference_steps=2, guidance_scale=2.0, **kw).images
    latents = sample_euler(net, z, pipe.scheduler.sigmas.double(), class_labels=[0], cfg=2.0)
    decoded = decode_latents(load_vae(tmp_path / "pipe"), latents)
    assert decoded.shape == images.shape == (1, 3, 8, 8)
    assert (decoded - images).abs().max() < 1e-5
    with pytest.raises(ValueError, match="has no VAE"):
        load_vae(folders["sd3"][0])


# 2. Text: prompts encoded once by the pipeline's own text encoder; Wan2.2 two transformers -------------

def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "<pad> </s> <unk> a red cat blue dog on the grass".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    """A tiny Wan2.2-style pipeline folder: tokenizer, UMT5 text encoder, two transformers, boundary 0.875."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    enc = UMT5EncoderModel(UMT5Config(vocab_size=11, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                      relative_attention_num_buckets=8)).eval()
    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=enc, transformer=tiny_model("wan", seed=0),
                       transformer_2=tiny_model("wan", seed=1), vae=None, boundary_ratio=0.875,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    root = tmp_path_factory.mktemp("wan22")
    pipe.save_pretrained(root / "pipe")
    (root / "prompts.txt").write_text("# two prompts\na red cat\n\na blue dog on the grass\n")
    return root


def test_prompts_encoded_once_and_wan22_routes_like_its_pipeline(wan22, tmp_path):
    from diffusers import WanPipeline

    prompts = read_prompts(wan22 / "prompts.txt")
    assert prompts == ["a red cat", "a blue dog on the grass"]
    table = encode_prompts(wan22 / "pipe", prompts, max_sequence_length=8, cache_dir=tmp_path)
    cached = list(tmp_path.glob("prompt_embeds-*.safetensors"))
    assert len(cached) == 1 and PromptEmbeddings.load(cached[0]).prompts == prompts
    assert table.prompt_embeds.shape == (3, 8, 32) and table.num_prompts == 2

    pipe = WanPipeline.from_pretrained(str(wan22 / "pipe"), vae=None)
    pipe.set_progress_bar_config(disable=True)
    ref, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=8)
    assert (ref - table.prompt_embeds[:2]).abs().max() < 1e-6

    net = load_backbone(wan22 / "pipe", table, latent_shape=TINY_LATENTS["wan"])
    assert net.transformer_2 is not None and net.config.boundary_ratio == 0.875
    z = noise("wan")
    out = pipe(prompt="a blue dog on the grass", negative_prompt="", guidance_scale=5.0, num_inference_steps=4,
               latents=z.clone(), height=32, width=32, num_frames=5, max_sequence_length=8,
               output_type="latent").frames
    sigmas = pipe.scheduler.sigmas
    assert (sigmas[:-1] >= 0.875).any() and (sigmas[:-1] < 0.875).any()  # both transformers in use
    x = sample_euler(net, z, sigmas.double(), class_labels=[1], cfg=5.0)
    assert (x - out).abs().max() < 1e-5

    # LoRA experts sit on both transformers; the stock pipeline loads them with load_into_transformer_2.
    lora = LoRAExperts(net, 2, LoRAConfig(rank=2))
    _perturb(lora)
    student = LoRAStudent(lora.experts, flow.phase_boundaries(4, 2, 3.0), flow.step_times(4, 3.0))
    student.save(tmp_path / "student")
    assert (tmp_path / "student" / "expert_1_transformer_2.safetensors").is_file()
    y = student.sample([0], noise=z)
    pipe = WanPipeline.from_pretrained(str(wan22 / "pipe"), vae=None)
    pipe.set_progress_bar_config(disable=True)
    out = run_student(pipe, tmp_path / "student", prompt="a red cat", latents=z.clone(), height=32, width=32,
                      num_frames=5, max_sequence_length=8, output_type="latent").frames
    assert (out - y).abs().max() < 1e-5


def _perturb(lora: LoRAExperts, scale: float = 0.3):
    """Stand-in for training: random LoRA B so that every expert differs from the teacher."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for e in lora.experts:
            for p in e.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


# 3. Phased DMD with LoRA experts through the trainer, then back into the pipeline ------------------------

def distill_config(folders, kind, **net):
    path, prompts = folders[kind]
    return DistillConfig(teacher=f"diffusers:{path}", method="phased-dmd", steps=2, options={"phases": 2}, iters=4,
                         batch_size=2, fake_updates_per_generator_update=2, lr_generator=1e-3, lr_fake=1e-3,
                         cfg=3.0, net={"prompts": str(prompts), "lora_rank": 4,
                                       "latent_shape": list(TINY_LATENTS[kind]), "guidance": GUIDANCE.get(kind),
                                       **net})


@pytest.mark.parametrize("kind", KINDS)
def test_phased_dmd_lora_experts(folders, kind, tmp_path):
    """2 phases x 2 iterations: base bit-identical, expert 1 frozen after phase 1, adapters-only folder,
    load round trip, and the student inside the stock pipeline equals the kit's own sampling."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    d = build_distiller(distill_config(folders, kind), tmp_path / "run", progress=False)
    base = d.teacher.backbone.transformer
    before = {k: v.clone() for k, v in base.state_dict().items() if "lora_" not in k}
    after_phase_1 = {}

    def snapshot(info):
        if info["iter"] == 2:
            after_phase_1.update({k: v.clone() for k, v in info["student"].experts[0].state_dict().items()})

    d.callbacks, d.callback_every = [snapshot], 1
    student = d.train()
    assert isinstance(student, LoRAStudent)
    after = {k: v for k, v in base.state_dict().items() if "lora_" not in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    expert_1 = student.experts[0].state_dict()
    assert after_phase_1 and all(torch.equal(after_phase_1[k], expert_1[k]) for k in after_phase_1)
    moved = [k for k, v in student.experts[1].state_dict().items() if "lora_B" in k and v.abs().max() > 0]
    assert moved  # expert 2 trained in phase 2 (LoRA B starts at 0)
    assert sum(p.numel() for p in d.critic_module.parameters()) == d.teacher.owner.num_adapter_parameters("fake_score")

    # Adapters only: every saved tensor is a LoRA tensor of its expert; no base weights on disk.
    run = tmp_path / "run"
    cfg = io.read_config(run)
    assert cfg["kind"] == "lora-student" and cfg["base"] == str(folders[kind][0].resolve())
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["expert_1.safetensors", "expert_2.safetensors",
                                                                  "prompt_embeds.safetensors"]
    from safetensors.torch import load_file

    for k, e in enumerate(student.experts, 1):
        saved = load_file(str(run / f"expert_{k}.safetensors"))
        assert all(".lora_A." in n or ".lora_B." in n for n in saved)
        assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in e.parameters())
    assert sum(v.numel() for v in saved.values()) < 0.5 * sum(v.numel() for v in before.values())

    # Round trip: the loaded student samples identically.
    z = noise(kind, 2, seed=3)
    x = student.sample([0, 1], noise=z)
    loaded = io.load_folder(run)
    assert isinstance(loaded, LoRAStudent)
    assert torch.equal(loaded.sample([0, 1], noise=z), x)

    # Back into diffusers: stock pipeline, student sigmas, a callback switching experts.
    pipe = make_pipeline(kind, load(folders, kind).transformer, FlowMatchEulerDiscreteScheduler(shift=3.0))
    out = run_student(pipe, run, **pipeline_inputs(kind, loaded.backbone.prompts, [0, 1], z, negative=False))
    assert pipe._pdmd_switch.used == ["expert_1", "expert_2"]
    assert torch.allclose(pipe.scheduler.sigmas.double(), loaded.step_times, atol=1e-6)
    assert (pipeline_latents(kind, out, z) - x).abs().max() < 1e-5


def test_lora_run_resumes_to_the_same_adapters(folders, tmp_path):
    """Interrupted after phase 1 (iteration 2 of 4) and resumed: the same adapters as an uninterrupted run."""
    full = build_distiller(distill_config(folders, "sd3"), tmp_path / "full", progress=False).train()

    def stop(info):
        if info["iter"] == 3:
            raise KeyboardInterrupt

    d = build_distiller(distill_config(folders, "sd3"), tmp_path / "cut", progress=False, callbacks=[stop],
                        callback_every=1)
    with pytest.raises(KeyboardInterrupt):
        d.train()
    assert io.read_config(tmp_path / "cut")["iters"] == 2
    resumed = build_distiller(distill_config(folders, "sd3"), tmp_path / "cut", progress=False)
    assert resumed.it == 2
    student = resumed.train()
    for a, b in zip(full.experts, student.experts):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_more_steps_than_phases_and_wan_two_expert_export(folders, tmp_path):
    """4 steps over 2 phases: the callback switches expert at the phase boundary; a Wan student maps onto
    Wan2.2's two transformers (``transformer_2``, ``boundary_ratio``) with no callback, same latents."""
    net = load(folders, "wan")
    lora = LoRAExperts(net, 2, LoRAConfig(rank=2))
    _perturb(lora)
    student = LoRAStudent(lora.experts, flow.phase_boundaries(4, 2, 3.0), flow.step_times(4, 3.0))
    student.save(tmp_path / "student")
    z = noise("wan", 2, seed=5)
    x = student.sample([0, 1], noise=z)
    pipe = wan_two_expert_pipeline(tmp_path / "student")
    ratio = pipe.config.boundary_ratio
    assert float(student.step_times[2]) < ratio < float(student.step_times[1])
    kwargs = pipeline_inputs("wan", net.prompts, [0, 1], z, negative=False)
    out = run_student(pipe, tmp_path / "student", load=False, **kwargs).frames
    assert pipe._pdmd_switch.used == ["expert_1", "expert_1", "expert_2", "expert_2"]
    assert (out - x).abs().max() < 1e-5
    teacher = sample_euler(lora.teacher, z, student.step_times, class_labels=[0, 1])
    assert (teacher - x).abs().max() > 1e-2  # the experts are not the teacher


def test_full_weight_experts_and_gradient_checkpointing(folders, tmp_path):
    """``experts=full``: trainable copies of the transformer; the teacher is untouched; the saved student
    (full weights per expert) loads and samples identically. Checkpointing changes no number."""
    cfg = distill_config(folders, "sd3", experts="full", gradient_checkpointing=True)
    d = build_distiller(cfg, tmp_path / "run", progress=False)
    teacher = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student = d.train()
    assert all(torch.equal(teacher[k], v) for k, v in d.teacher.state_dict().items())
    assert d.teacher.transformer.gradient_checkpointing
    assert type(student).__name__ == "FullStudent"
    z = noise("sd3", 2)
    loaded = io.load_folder(tmp_path / "run")
    assert torch.equal(loaded.sample([0, 1], noise=z), student.sample([0, 1], noise=z))
    diff = max((a - b).abs().max().item() for a, b in zip(student.experts[1].parameters(), d.teacher.parameters()))
    assert diff > 0

    plain = build_distiller(distill_config(folders, "sd3", experts="full"), tmp_path / "plain", progress=False).train()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.experts[1].parameters(),
                                                                student.experts[1].parameters()))


# 4. Bad input: one line, exit code 2 ----------------------------------------------------------------------

def run_cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_bad_input_one_line_exit_2(folders, tmp_path, capsys):
    path, prompts = folders["sd3"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    base = ["distill", "--method", "phased-dmd", "--steps", 2, "--phases", 2, "--iters", 2, "--out", tmp_path / "x"]
    cases = [
        (["--teacher", f"diffusers:{tmp_path}", "--prompts", prompts], "holds no diffusers model"),
        (["--teacher", f"diffusers:{tmp_path / 'unknown'}", "--prompts", prompts],
         "model class 'UNet2DConditionModel' is not supported"),
        (["--teacher", f"diffusers:{path}", "--prompts", tmp_path / "nope.txt"], "does not exist"),
        (["--teacher", f"diffusers:{path}", "--prompts", tmp_path / "empty.txt"], "holds no prompts"),
        (["--teacher", f"diffusers:{path}", "--prompts", prompts, "--lora-rank", 0], "LoRA rank must be a positive"),
        (["--teacher", f"diffusers:{path}"], "needs --prompts"),
        (["--teacher", f"diffusers:{path}", "--prompts", prompts, "--experts", "half"], "experts must be one of"),
        (["--teacher", "oracle:ring-mix", "--prompts", prompts], "--prompts applies to --teacher diffusers:PATH"),
        (["--teacher", f"diffusers:{path}", "--prompts", tmp_path / "empty.safetensors"],
         "does not exist"),
    ]
    for extra, msg in cases:
        code, err = run_cli(capsys, *base, *extra)
        assert code == 2, (extra, err)
        assert msg in err and len(err.strip().splitlines()) == 1, (extra, err)
    with pytest.raises(ValueError, match="labels must be in"):
        load(folders, "sd3")(noise("sd3"), 0.5, torch.tensor([3]))
    with pytest.raises(ValueError, match="latent"):
        load_backbone(path, PromptEmbeddings.load(prompts), latent_shape=(3, 8, 8))


# 5. Scale switches, in fresh processes (accelerate's state is per process) -------------------------------

def _cli(*args, env=None, nproc: int = 1, tmp=None):
    """Run ``pdmd-lab`` (under ``torchrun`` with gloo for ``nproc > 1``); returns the completed process."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "pdmd-lab"), "--threads", "1", *map(str, args)]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(bin_dir / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={port}", "--no-python", *cmd]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=240)


def _distill_args(folders, out, *extra):
    path, prompts = folders["sd3"]
    return ["distill", "--teacher", f"diffusers:{path}", "--method", "phased-dmd", "--steps", 2, "--phases", 2,
            "--iters", 4, "--batch-size", 4, "--fake-updates", 1, "--lr-generator", 1e-3, "--lr-fake", 1e-3,
            "--prompts", prompts, "--lora-rank", 4, "--latent-shape", "4,8,8", "--out", out, *extra]


@pytest.mark.slow
def test_two_processes_match_one(folders, tmp_path):
    """``torchrun --nproc_per_node 2`` (CPU, gloo) x batch 2 ends with the adapters of 1 process x batch 4."""
    from safetensors.torch import load_file

    one = _cli(*_distill_args(folders, tmp_path / "one"))
    two = _cli(*_distill_args(folders, tmp_path / "two"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    assert io.read_config(tmp_path / "two")["processes"] == 2
    for k in (1, 2):
        a = load_file(str(tmp_path / "one" / f"expert_{k}.safetensors"))
        b = load_file(str(tmp_path / "two" / f"expert_{k}.safetensors"))
        assert a.keys() == b.keys()
        assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-5
        assert max(a[n].abs().max().item() for n in a if ".lora_B." in n) > 1e-4  # trained, not zeros


@pytest.mark.slow
def test_bf16_weights_mixed_precision_checkpointing(folders, tmp_path):
    """bfloat16 base, ``--mixed-precision bf16`` (accelerate autocast) and gradient checkpointing train;
    the adapters stay float32 and the base folder is untouched."""
    import hashlib

    from safetensors.torch import load_file

    weights = next(folders["sd3"][0].glob("*.safetensors"))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    run = _cli(*_distill_args(folders, tmp_path / "bf16", "--weights-dtype", "bfloat16", "--mixed-precision", "bf16",
                              "--gradient-checkpointing"))
    assert run.returncode == 0, run.stderr[-2000:]
    cfg = io.read_config(tmp_path / "bf16")
    assert cfg["train"]["net"]["dtype"] == "bfloat16" and cfg["train"]["net"]["gradient_checkpointing"]
    logs = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert logs and all(torch.isfinite(torch.tensor(r["loss_fake"])) for r in logs)
    saved = load_file(str(tmp_path / "bf16" / "expert_2.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest


# 6. Memory of one generator step: LoRA experts flat in N and K, below full-weight experts ----------------

def test_generator_step_memory_lora_flat_and_smallest():
    from pdmd_lab.backbones.memory import memory_markdown, memory_table

    rows = memory_table((1, 4), latent=(4, 8, 8), num_layers=8)
    one, four = rows
    assert abs(four["lora_mb"] - one["lora_mb"]) < 0.1 * one["lora_mb"]  # 4x the steps and experts: ~flat
    assert four["lora_mb"] < 0.5 * four["full_mb"] and one["lora_mb"] < 0.5 * one["full_mb"]
    # Full weights: teacher + K experts + fake score copies; LoRA: one base plus K + 1 adapters.
    assert four["full_weights_mb"] == pytest.approx(one["full_weights_mb"] * 6 / 3, rel=1e-6)
    assert four["lora_weights_mb"] < 1.2 * one["lora_weights_mb"]
    assert four["backprop_mb"] > 1.5 * one["backprop_mb"]  # activations of all N steps
    assert four["lora_trainable"] == one["lora_trainable"] < 0.2 * one["full_trainable"]
    assert "| 4 |" in memory_markdown(rows)

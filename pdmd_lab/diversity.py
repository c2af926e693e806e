"""Evaluate your own model: the Phased DMD paper's diversity and motion protocol for any local pipeline or student.

``pdmd-lab diversity --models diffusers:TEACHER,STUDENT,... --prompts FILE --features DINO --seeds 8 --out DIR``

Protocol (Phased DMD, Table 3 and the Wan2.1 video table):

1. Per prompt, ``N`` seeds; seed ``s`` gives the same initial noise to every model.
2. Latents are decoded with the pipeline's own local VAE (:func:`~pdmd_lab.backbones.pipelines.decode_latents`).
3. Each image is embedded with a local feature model (:class:`FeatureModel`: DINOv2 / DINOv3 or a CLIP
   vision tower through transformers ``AutoModel`` + ``AutoImageProcessor``, ``local_files_only``): the
   pooled / CLS output, as in the paper's DINO protocol. A clip's embedding is the mean of its frames'
   unit-normalised embeddings.
4. Per prompt and model: the mean pairwise cosine similarity over the ``N`` seeds (lower = more diverse)
   and the Vendi score with the cosine kernel (Friedman & Dieng 2023; 1 for identical images, ``N`` at
   most). Beside them, so that noise never looks best, fidelity: the feature distance to the reference
   (the first model, normally the teacher) for the same prompt and seed, ``1 - cos``, and, with a local
   CLIP model that has its text tower, the CLIP score ``100 max(cos(image, text), 0)`` (torchmetrics'
   convention).
5. Video: per clip the mean optical-flow magnitude of the decoded frames (:mod:`pdmd_lab.opticalflow`,
   Farneback) and the dynamic degree, the share of clips above a stated threshold.
6. Over prompts: the mean with a Student-t 95% interval. LPIPS is not computed: the ``lpips`` package
   takes its backbone from torchvision's pretrained weights, which are not local (this kit never
   downloads), and the table says it was skipped.

The teacher (``diffusers:PATH``, optionally ``diffusers:PATH@STEPS``) runs with the steps, CFG scale and
time shift given (recorded in ``diversity.json``); students (LoRA or full-weight folders) run their own
steps with no CFG. Kit models (zoo names and folders of the kit's own datasets) go through the same
command with their own data: classes are the prompts, and image families are embedded with their shipped
classifier unless ``--features`` is given; ``motion-mix`` clips are drawn as frames and their Farneback flow
is put beside the exact displacement (:func:`trajectory_motion`).

Outputs: ``diversity.json``, ``diversity.csv`` (one line per model and prompt), ``diversity.md`` (laid
out like the paper's tables) and ``sheets/prompt_K.png`` (models as rows, seeds as columns; video: the
middle frame).
"""

from __future__ import annotations

import csv
import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pdmd_lab import io, metrics
from pdmd_lab import opticalflow as of

LPIPS_NOTE = ("skipped: the lpips package takes its backbone from torchvision's pretrained weights, which are not "
              "local (the kit never downloads)")
CLIP_SCALE = 100.0  # CLIP score = 100 max(cos, 0), torchmetrics' convention
STUDENT_KINDS = ("lora-student", "backbone-student")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DiversityConfig:
    models: list[str]  # first = reference (teacher); diffusers:PATH[@STEPS], student folders, zoo names
    prompts: str = ""  # prompts text file or embeddings .safetensors (kit datasets: empty = every class)
    seeds: int = 8  # seeds per prompt (the paper: 8)
    seed: int = 0  # first seed; seeds are seed, seed + 1, ...
    features: str = ""  # local feature model folder (DINOv2 / DINOv3 / CLIP); kit image families: their classifier
    clip: str = ""  # local CLIPModel with its text tower, for the CLIP score (also taken from --features if it is one)
    teacher_steps: int = 50
    teacher_cfg: float = 5.0  # CFG of diffusers: teachers, standard form (1 = none)
    teacher_shift: float | None = None  # None: the pipeline scheduler's shift (1 if it has none)
    teacher_guidance: float | None = None  # embedded guidance of guidance-distilled teachers (Flux-dev), not CFG
    latent_shape: list[int] = field(default_factory=list)  # empty: the first student's, else the teacher's default
    vae: str = ""  # pipeline folder whose vae/ decodes every row; empty: each model's own pipeline folder
    flow_threshold: float | None = None  # dynamic degree threshold, px/frame; None: 6 min(H, W) / 256
    batch_size: int = 8
    max_sequence_length: int = 256
    device: str = ""  # empty: cuda when available, else cpu
    dtype: str = "float32"  # weights of transformers and VAEs: float32, bfloat16 or float16 (sampled under autocast)

    def __post_init__(self):
        self.models = [m.strip() for m in self.models if m.strip()]
        if not self.models:
            raise ValueError("--models names no model")
        if len(set(self.models)) != len(self.models):
            raise ValueError("--models names a model twice")
        if self.seeds < 2:
            raise ValueError(f"--seeds must be >= 2 (diversity compares seeds), got {self.seeds}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.teacher_steps < 1:
            raise ValueError(f"--teacher-steps must be >= 1, got {self.teacher_steps}")
        for name, v in (("--teacher-cfg", self.teacher_cfg), ("--teacher-shift", self.teacher_shift),
                        ("--teacher-guidance", self.teacher_guidance), ("--flow-threshold", self.flow_threshold)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if self.teacher_shift is not None and self.teacher_shift <= 0:
            raise ValueError(f"--teacher-shift must be > 0, got {self.teacher_shift}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.device:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"--device {self.device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None


# Feature models ----------------------------------------------------------------------------------------

def _check_model_folder(path, option: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{option} {str(root)!r} is not a folder")
    if not (root / "config.json").is_file():
        raise ValueError(f"{option} {str(root)!r} holds no model (no config.json; save one with save_pretrained)")
    if not (root / "preprocessor_config.json").is_file():
        raise ValueError(f"{option} {str(root)!r} holds no image processor (no preprocessor_config.json)")
    return root


@contextmanager
def _quiet_transformers():
    """No loading bars or backend notices from transformers (errors still raise): a refusal stays one line."""
    from transformers.utils import logging as tlog

    bars, level = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


class FeatureModel:
    """A local image model from transformers: ``AutoModel`` + ``AutoImageProcessor``, ``local_files_only``.

    The embedding is the model's image embedding: ``get_image_features`` for CLIP-like models (projected),
    else the pooled output (DINOv2 / DINOv3: the layer-normed CLS token; CLIP vision tower: its pooled
    CLS), else the CLS token of the last hidden state. :meth:`embed_texts` exists when the model has a
    text tower and a tokenizer (CLIP).
    """

    def __init__(self, path, *, option: str = "--features", device="cpu"):
        root = _check_model_folder(path, option)
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        try:
            with _quiet_transformers():
                self.model = AutoModel.from_pretrained(str(root), local_files_only=True).to(device).eval()
                self.processor = AutoImageProcessor.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{option} {str(root)!r}: transformers cannot load it: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        self.path = str(root)
        self.name = type(self.model).__name__
        self.device = device
        self.tokenizer = None
        if hasattr(self.model, "get_text_features"):
            try:
                with _quiet_transformers():
                    self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError):
                self.tokenizer = None

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled
        return out.last_hidden_state[:, 0]

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` (or grey ``(N, 1, H, W)``) in [0, 1] -> features ``(N, D)`` float32."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 3, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        arrays = (images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
                  .cpu().numpy())  # (N, H, W, 3)
        out = []
        for i in range(0, len(arrays), batch_size):
            px = self.processor(images=list(arrays[i:i + batch_size]), return_tensors="pt")["pixel_values"]
            px = px.to(self.device, self.model.dtype)
            if hasattr(self.model, "get_image_features"):
                f = self._pooled(self.model.get_image_features(pixel_values=px))
            else:
                f = self._pooled(self.model(pixel_values=px))
            out.append(f.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> text features ``(P, D)`` (CLIP models with a tokenizer only)."""
        if not self.has_text:
            raise ValueError(f"{self.path!r} has no text tower and tokenizer for a CLIP score")
        max_len = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", 77)
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self._pooled(self.model.get_text_features(**tok)).float().cpu()


class ClassifierFeatures:
    """A kit image family's own shipped classifier as the feature model (penultimate features)."""

    def __init__(self, family: str):
        from pdmd_lab import zoo
        from pdmd_lab.embed import load_classifier

        path = zoo.ASSETS / family / "classifier"
        if not (path / "config.json").is_file():
            raise ValueError(f"family {family!r} ships no classifier; give --features PATH (a local feature model)")
        self.classifier = load_classifier(path)
        self.name = f"{family} classifier"
        self.path = str(path)
        self.tokenizer = None
        self.has_text = False

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        from pdmd_lab.embed import embed

        return embed(self.classifier, images * 2 - 1, batch_size).float()  # the kit's images are in [-1, 1]


# Feature arithmetic (known answers in tests/test_diversity.py) ----------------------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_embedding(frame_features: torch.Tensor) -> torch.Tensor:
    """``(N, F, D)`` per-frame features -> ``(N, D)``: the mean of the unit-normalised frame embeddings."""
    return _unit(frame_features.double()).mean(1).float()


def teacher_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean ``1 - cos`` between each sample's features and the reference's for the same prompt and seed."""
    if features.shape != reference.shape:
        raise ValueError(f"features {tuple(features.shape)} and reference {tuple(reference.shape)} differ")
    return float((1 - (_unit(features.double()) * _unit(reference.double())).sum(-1)).clamp_min(0).mean())


def clip_score(image_features: torch.Tensor, text_feature: torch.Tensor) -> float:
    """``100 max(cos(image, text), 0)`` averaged over the images (torchmetrics' CLIPScore)."""
    cos = (_unit(image_features.double()) * _unit(text_feature.double()).reshape(1, -1)).sum(-1)
    return float(CLIP_SCALE * cos.clamp_min(0).mean())


def diversity_scores(features: torch.Tensor) -> dict:
    """Mean pairwise cosine similarity (lower = more diverse) and cosine-kernel Vendi of one prompt's seeds."""
    return {"cosine": metrics.pairwise_cosine_similarity(features),
            "vendi": metrics.vendi_score(features, kernel="cosine")}


# Rows: what each model is and how its outputs become images --------------------------------------------

@dataclass
class Row:
    name: str
    sampler: object  # a kit Sampler: sample(labels, seed, noise=...) -> latents or data
    kind: str  # "teacher", "student", "kit"
    info: dict
    vae: object = None  # decodes latents (backbones); None: the outputs are images / trajectories already


def _denoisers(sampler) -> list:
    from pdmd_lab.backbones.adapters import DiffusersDenoiser

    out = []
    for e in sampler.experts:
        e = getattr(e, "backbone", e)
        if isinstance(e, DiffusersDenoiser) and all(e is not o for o in out):
            out.append(e)
    return out


def _use_prompts(sampler, table) -> None:
    """Condition every backbone of ``sampler`` on the evaluation prompts (labels index ``table``)."""
    for d in _denoisers(sampler):
        old = d.prompts
        if old.prompt_embeds.shape[-1] != table.prompt_embeds.shape[-1]:
            raise ValueError(f"the prompt embeddings are {table.prompt_embeds.shape[-1]} wide, but "
                             f"{d.config.path!r} takes {old.prompt_embeds.shape[-1]}: encode --prompts with a "
                             f"pipeline of the same text encoders")
        for key in ("pooled_prompt_embeds", "prompt_embeds_mask"):
            if (getattr(old, key, None) is None) != (getattr(table, key, None) is None):
                raise ValueError(f"the prompt embeddings and {d.config.path!r} disagree on {key}")
        d.prompts = table.to(old.prompt_embeds.device)
        d.config.num_classes = table.num_prompts


def _split_steps(spec: str) -> tuple[str, int | None]:
    base, sep, steps = spec.rpartition("@")
    if sep and steps.isdigit():
        if int(steps) < 1:
            raise ValueError(f"step count must be >= 1 in {spec!r}")
        return base, int(steps)
    return spec, None


def _scheduler_shift(path: str) -> float:
    import json

    file = Path(path) / "scheduler" / "scheduler_config.json"
    cfg = json.loads(file.read_text()) if file.is_file() else {}
    if cfg.get("use_dynamic_shifting"):
        raise ValueError(f"the scheduler of {path!r} shifts time by resolution (dynamic shifting): give "
                         f"--teacher-shift")
    shift = cfg.get("shift", cfg.get("flow_shift"))  # FlowMatchEuler: shift; Wan's UniPC: flow_shift
    return 1.0 if shift is None else float(shift)


def _student_kind(spec: str) -> str | None:
    p = Path(spec)
    if not (p / io.CONFIG).is_file():
        return None
    kind = io.read_config(p).get("kind")
    return kind if kind in STUDENT_KINDS else None


def _vae_source(folder: str, cfg: DiversityConfig, name: str) -> str:
    """The pipeline folder whose ``vae/`` decodes ``name`` (checked without loading anything)."""
    import json

    src = Path(cfg.vae or folder)
    index = src / "model_index.json"
    entry = json.loads(index.read_text()).get("vae") if index.is_file() else None
    if not entry or entry[1] is None or not (src / "vae" / "config.json").is_file():
        raise ValueError(f"{name}: {str(src)!r} has no VAE to decode its latents (a pipeline folder with vae/ is "
                         f"needed; --vae PATH names one)")
    return str(src)


def _vae_for(folder: str, cfg: DiversityConfig, name: str):
    from pdmd_lab.backbones.pipelines import load_vae

    return load_vae(_vae_source(folder, cfg, name), DTYPES[cfg.dtype]).to(cfg.device).eval()


def _student_class(kind: str):
    from pdmd_lab.backbones.students import FULL_KIND, LORA_KIND, FullStudent, LoRAStudent

    return {LORA_KIND: LoRAStudent, FULL_KIND: FullStudent}[kind]


def check_inputs(cfg: DiversityConfig) -> bool:
    """Every check that needs no model loaded: folders, prompts, student kinds, VAEs. Returns whether the
    models are real backbones (``diffusers:`` teachers, backbone students) rather than kit models."""
    from pdmd_lab.backbones.adapters import find_model
    from pdmd_lab.backbones.prompts import read_prompts

    if cfg.features:
        _check_model_folder(cfg.features, "--features")
    if cfg.clip:
        _check_model_folder(cfg.clip, "--clip")
    backbone = any(m.startswith("diffusers:") or _student_kind(m) for m in cfg.models)
    if not backbone:
        if cfg.clip:
            raise ValueError("--clip applies to diffusers: models and backbone students (kit classes have no text)")
        return False
    if not cfg.features:
        raise ValueError("--features PATH is needed: a local feature model folder (DINOv2 / DINOv3 / CLIP, "
                         "saved with save_pretrained); nothing is downloaded")
    if not cfg.prompts:
        raise ValueError("--prompts is needed for diffusers: models and backbone students (a prompts text file, "
                         "one prompt a line, or an embeddings .safetensors file)")
    if Path(cfg.prompts).suffix == ".safetensors":
        if not Path(cfg.prompts).is_file():
            raise ValueError(f"prompts file {cfg.prompts!r} does not exist")
    else:
        read_prompts(cfg.prompts)
    for m in cfg.models:
        if m.startswith("diffusers:"):
            path = _split_steps(m.split(":", 1)[1])[0]
            find_model(path)
            _vae_source(path, cfg, m)
            if cfg.teacher_shift is None:
                _scheduler_shift(path)
        elif _student_kind(m) is None:
            raise ValueError(f"{m!r} is not a backbone student folder (lora-student or backbone-student); "
                             f"diffusers: models and kit models cannot share one table")
        else:
            _vae_source(io.read_config(m)["base"], cfg, m)
    return True


def load_backbone_rows(cfg: DiversityConfig):
    """Teachers (``diffusers:PATH``) and students of real backbones, all conditioned on one prompt table."""
    from pdmd_lab.backbones.adapters import load_backbone
    from pdmd_lab.backbones.prompts import resolve_prompts
    from pdmd_lab.student import TeacherSampler

    check_inputs(cfg)
    teachers = [_split_steps(m.split(":", 1)[1]) for m in cfg.models if m.startswith("diffusers:")]
    students = [m for m in cfg.models if not m.startswith("diffusers:")]
    student_cfgs = {m: io.read_config(m) for m in students}
    dtype = DTYPES[cfg.dtype]
    encoder = teachers[0][0] if teachers else student_cfgs[students[0]]["base"]
    table = resolve_prompts(cfg.prompts, encoder, max_sequence_length=cfg.max_sequence_length)
    shape = list(cfg.latent_shape) or (list(student_cfgs[students[0]]["latent_shape"]) if students else None)
    rows = []
    for spec in cfg.models:
        if spec.startswith("diffusers:"):
            path, at = _split_steps(spec.split(":", 1)[1])
            net = load_backbone(path, table, latent_shape=shape, dtype=dtype, device=cfg.device,
                                guidance=cfg.teacher_guidance)
            steps = at or cfg.teacher_steps
            shift = _scheduler_shift(path) if cfg.teacher_shift is None else cfg.teacher_shift
            sampler = TeacherSampler(net, steps=steps, cfg=cfg.teacher_cfg, shift=shift, dataset="prompts",
                                     shape=net.shape, meta={"name": spec})
            info = {"steps": steps, "cfg": cfg.teacher_cfg, "shift": shift, "base": path}
            if cfg.teacher_guidance is not None:
                info["guidance"] = cfg.teacher_guidance
            rows.append(Row(spec, sampler, "teacher", info, _vae_for(path, cfg, spec)))
        else:
            c = student_cfgs[spec]
            sampler = _student_class(c["kind"]).from_folder(spec, c, cfg.device, dtype=dtype)
            _use_prompts(sampler, table)
            info = {"steps": sampler.num_steps, "cfg": 1.0, "experts": len(c.get("experts", [])),
                    "method": c.get("method", ""), "base": c["base"]}
            rows.append(Row(spec, sampler, "student", info, _vae_for(c["base"], cfg, spec)))
        rows[-1].info["nfe"] = rows[-1].sampler.nfe
        shape = list(rows[-1].sampler.shape)
    shapes = {tuple(r.sampler.shape) for r in rows}
    if len(shapes) > 1:
        raise ValueError(f"the models draw different latent shapes {sorted(shapes)}: the same noise cannot go to "
                         f"all of them (give --latent-shape)")
    return rows, list(table.prompts)


def load_kit_rows(cfg: DiversityConfig):
    """Kit models (zoo names, folders) of one image family; classes are the prompts."""
    from pdmd_lab import zoo
    from pdmd_lab.data import get_dataset

    rows = []
    for spec in cfg.models:
        m = zoo.load(spec)
        info = {"steps": m.num_steps, "cfg": float(m.cfg), "nfe": m.nfe, "dataset": m.dataset}
        rows.append(Row(spec, m, "teacher" if hasattr(m, "with_steps") else "student", info))
    families = {r.sampler.dataset for r in rows}
    if len(families) != 1:
        raise ValueError(f"--models mixes datasets {sorted(families)}; compare models of one dataset")
    ds = get_dataset(families.pop())
    if len(ds.shape) != 3 and not _draws_frames(ds):
        raise ValueError(f"dataset {ds.name!r} holds neither images nor clips of a point; the diversity protocol "
                         f"embeds images (use `pdmd-lab evaluate` for it)")
    if cfg.prompts:
        lines = [s.strip() for s in Path(cfg.prompts).read_text().splitlines()] if Path(cfg.prompts).is_file() \
            else None
        if lines is None:
            raise ValueError(f"prompts file {cfg.prompts!r} does not exist")
        lines = [s for s in lines if s and not s.startswith("#")]
        if not lines:
            raise ValueError(f"prompts file {cfg.prompts!r} holds no prompts (kit datasets: one class index a line)")
        try:
            classes = [int(s) for s in lines]
        except ValueError:
            raise ValueError(f"prompts of a kit dataset are class indices, one a line; {cfg.prompts!r} holds "
                             f"other text") from None
        bad = [c for c in classes if not 0 <= c < ds.num_classes]
        if bad:
            raise ValueError(f"class {bad[0]} is out of range for {ds.name!r} (0..{ds.num_classes - 1})")
    else:
        classes = list(range(ds.num_classes))
    return rows, [f"class {c}" for c in classes], classes, ds


# The protocol ---------------------------------------------------------------------------------------------

def _noise(shape, seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def _render(row: Row, labels: torch.Tensor, noise: torch.Tensor, batch_size: int):
    """Batches of images ``(B, 3 or 1, H, W)`` or clips ``(B, 3, F, H, W)`` in [0, 1] for one prompt's seeds
    (a generator: decoded video is large, so each batch is measured and dropped before the next)."""
    from pdmd_lab.backbones.pipelines import decode_latents

    dtype = row.vae.dtype if row.vae is not None else torch.float32
    device = row.vae.device if row.vae is not None else torch.device("cpu")
    for i in range(0, len(labels), batch_size):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):  # low-precision weights
            x = row.sampler.sample(labels[i:i + batch_size], seed=0, noise=noise[i:i + batch_size])
        x = decode_latents(row.vae, x) if row.vae is not None else (x.float().clamp(-1, 1) + 1) / 2
        yield x.float().cpu()


def _measure(row: Row, labels, noise, cfg: DiversityConfig, features, clip) -> dict:
    """One model, one prompt: features, CLIP features, per-clip flows and the images of the contact sheet."""
    feats, clip_feats, flows, shown = [], [], [], []
    for x in _render(row, labels, noise, cfg.batch_size):
        f = _embed(features, x, cfg.batch_size)
        feats.append(f)
        if clip is not None:
            clip_feats.append(f if clip is features else _embed(clip, x, cfg.batch_size))
        if x.ndim == 5:
            flows += [of.mean_flow(of.clip_frames(c)) for c in x]
        shown.append(_middle(x))
    return {"features": torch.cat(feats), "clip": torch.cat(clip_feats) if clip_feats else None,
            "flows": flows if flows else None, "shown": torch.cat(shown), "size": tuple(shown[0].shape[-2:])}


def _embed(features, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if x.ndim == 5:  # clips (N, 3, F, H, W): every frame, then the mean of the unit frame embeddings
        n, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * f, c, h, w)
        return clip_embedding(features.embed_images(frames).reshape(n, f, -1))
    return features.embed_images(x)


def _middle(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, x.shape[2] // 2] if x.ndim == 5 else x


def _draws_frames(ds) -> bool:
    """Whether the dataset's family draws a sample as video frames (``render_frames``: motion-mix clips)."""
    from pdmd_lab.families import get_family

    return hasattr(get_family(ds), "render_frames")


# Clips of a point (motion-mix): the image-based flow beside the exact displacement ----------------------------

FRAME_SIZE, FRAME_EXTENT = 128, 12.0  # frames of 128 px showing [-12, 12]^2 (5.33 px per unit): clips stay inside


def trajectory_motion(x: torch.Tensor, *, size: int = FRAME_SIZE, extent: float = FRAME_EXTENT) -> dict:
    """Flow of trajectories ``(N, 2T)`` or ``(N, T, 2)``, exact and estimated, in pixels per frame.

    ``exact``: ``mean_f |p_{f+1} - p_f|`` times the pixels per unit. Farneback on the family's rendering
    (a dot on black, :func:`pdmd_lab.motion.render_frames`): ``dot_object`` over the dot's pixels and
    ``dot_interior`` over the whole interior (what the video metric does: the still background dilutes it);
    ``pan``: on a textured pan that follows the trajectory (:func:`pdmd_lab.opticalflow.render_frames`).
    """
    from pdmd_lab import motion

    trajs = motion.as_frames(torch.as_tensor(x)).double()
    ppu = size / (2 * extent)
    dot = of.trajectory_flow_table(trajs, render=lambda t: motion.render_frames(t, size, extent),
                                   pixels_per_unit=ppu)
    pan = of.trajectory_flow_table(trajs, render=lambda t: of.render_frames(t, size, ppu), pixels_per_unit=ppu)
    outside = (trajs.abs().amax(dim=(1, 2)) > extent).double().tolist()  # 1.0: the dot leaves the frame
    return {"pixels_per_unit": ppu, "exact": dot["exact"], "dot_object": dot["object"],
            "dot_interior": dot["estimate"], "pan": pan["estimate"], "outside": outside}


def run_trajectory_motion(cfg: DiversityConfig, rows, classes, ds, out: Path, *, progress: bool = True) -> dict:
    """``diversity`` for clips of a point: per class the seeds' exact flow beside Farneback's estimates."""
    from pdmd_lab import motion
    from pdmd_lab.study import mean_ci

    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    keys = ("exact", "dot_object", "dot_interior", "pan", "outside")
    per_prompt, clips = [], {r.name: {k: [] for k in keys} for r in rows}
    for label in classes:
        noise = _noise(rows[0].sampler.shape, seeds)
        labels = torch.full((len(seeds),), int(label), dtype=torch.long)
        for r in rows:
            x = r.sampler.sample(labels, seed=0, noise=noise).float().cpu()
            m = trajectory_motion(x)
            for k in keys:
                clips[r.name][k] += m[k]
            per_prompt.append({"model": r.name, "prompt_index": int(label), "prompt": f"class {label}",
                               **{k: float(np.mean(m[k])) for k in keys}})
    ppu = FRAME_SIZE / (2 * FRAME_EXTENT)
    threshold = motion.DYNAMIC_THRESHOLD * ppu
    summary = {}
    for r in rows:
        recs = [p for p in per_prompt if p["model"] == r.name]
        summary[r.name] = {k: dict(zip(("mean", "ci95"), mean_ci([p[k] for p in recs]))) for k in keys}
        c = clips[r.name]
        summary[r.name]["dynamic_degree_exact"] = of.dynamic_degree(c["exact"], threshold)
        summary[r.name]["dynamic_degree_dot"] = of.dynamic_degree(c["dot_object"], threshold)
        summary[r.name]["outside_share"] = float(np.mean(c["outside"]))
        moving = np.asarray(c["exact"]) > 1e-9
        for k in ("dot_object", "dot_interior", "pan"):
            e, v = np.asarray(c["exact"]), np.asarray(c[k])
            summary[r.name][f"{k}_rel_error"] = float((np.abs(v - e)[moving] / e[moving]).mean()) \
                if moving.any() else float("nan")
    result = {"protocol": "clips of a point rendered to frames: OpenCV Farneback beside the exact displacement",
              "config": {**asdict(cfg), "out": str(out)}, "dataset": ds.name, "reference": rows[0].name,
              "models": {r.name: {"kind": r.kind, **r.info} for r in rows},
              "prompts": [f"class {c}" for c in classes], "seeds": seeds,
              "frames": {"size": FRAME_SIZE, "extent": FRAME_EXTENT, "pixels_per_unit": ppu,
                         "dynamic_threshold_px": threshold,
                         "dynamic_threshold": motion.DYNAMIC_THRESHOLD},
              "per_prompt": per_prompt, "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "diversity.json", result)
    _write_csv(out / "diversity.csv", per_prompt)
    (out / "diversity.md").write_text(trajectory_markdown(result) + "\n")
    result["sheets"] = []
    return result


def trajectory_markdown(result: dict) -> str:
    s, fr = result["summary"], result["frames"]
    lines = [f"Mean optical flow of {result['dataset']} clips in px/frame ({len(result['seeds'])} seeds x "
             f"{len(result['prompts'])} classes; mean ± 95% interval over classes). Frames of {fr['size']} px, "
             f"{fr['pixels_per_unit']:.3g} px per unit; exact = mean |p_(f+1) - p_f|; Farneback on a dot on black "
             f"(over the dot, and over the interior as the video metric does) and on a textured pan.", "",
             "| model | exact | Farneback, dot | Farneback, interior | Farneback, pan | dynamic degree exact / dot |",
             "|---|---|---|---|---|---|"]
    for name, v in s.items():
        lines.append(f"| {name} | {_fmt(v['exact'])} | {_fmt(v['dot_object'])} "
                     f"({100 * v['dot_object_rel_error']:.1f}% off) | {_fmt(v['dot_interior'])} | {_fmt(v['pan'])} "
                     f"({100 * v['pan_rel_error']:.1f}% off) | {100 * v['dynamic_degree_exact']:.1f}% / "
                     f"{100 * v['dynamic_degree_dot']:.1f}% |")
    lines += ["", f"Dynamic: mean flow > {fr['dynamic_threshold']:g} units = {fr['dynamic_threshold_px']:.3g} px per "
              f"frame (half the slow speed). Clips leaving the frame (their motion is lost there): "
              + ", ".join(f"{name} {100 * v['outside_share']:.1f}%" for name, v in s.items()) + "."]
    return "\n".join(lines)


def run_diversity(cfg: DiversityConfig, out, *, progress: bool = True) -> dict:
    """Run the protocol for ``cfg`` and write the tables and contact sheets into ``out`` (checked first)."""
    from pdmd_lab import safety
    from pdmd_lab.study import mean_ci

    out = safety.output_folder(out, option="--out")
    if check_inputs(cfg):
        features = FeatureModel(cfg.features, device=cfg.device)
        clip = FeatureModel(cfg.clip, option="--clip", device=cfg.device) if cfg.clip else None
        rows, prompts = load_backbone_rows(cfg)
        classes = list(range(len(prompts)))
    else:
        features = FeatureModel(cfg.features) if cfg.features else None
        clip = None
        rows, prompts, classes, ds = load_kit_rows(cfg)
        if _draws_frames(ds):
            if cfg.features:
                raise ValueError(f"--features does not apply to {ds.name!r}: its clips are measured by their motion")
            return run_trajectory_motion(cfg, rows, classes, ds, out, progress=progress)
        features = features or ClassifierFeatures(ds.name)
    if clip is None and getattr(features, "has_text", False):
        clip = features
    if clip is not None and not clip.has_text:
        raise ValueError(f"--clip {clip.path!r} has no text tower and tokenizer (a CLIPModel folder is needed)")
    text_features = clip.embed_texts(prompts) if clip is not None else None
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))

    # Sample, decode and embed: per prompt, the same noise for every model.
    per_prompt, flows, sheets, video, threshold = [], {r.name: [] for r in rows}, [], False, cfg.flow_threshold
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    shape = rows[0].sampler.shape
    it = list(enumerate(zip(prompts, classes)))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="prompts")
    for k, (prompt, label) in it:
        noise = _noise(shape, seeds)
        labels = torch.full((len(seeds),), int(label), dtype=torch.long)
        measured = {r.name: _measure(r, labels, noise, cfg, features, clip) for r in rows}
        ref = measured[rows[0].name]["features"]
        for r in rows:
            m = measured[r.name]
            f = m["features"]
            rec = {"model": r.name, "prompt_index": k, "prompt": prompt, **diversity_scores(f),
                   "teacher_distance": teacher_distance(f, ref)}
            if clip is not None:
                rec["clip_score"] = clip_score(m["clip"], text_features[k])
            if m["flows"] is not None:
                video = True
                if threshold is None:
                    threshold = of.default_threshold(*m["size"])
                clip_flows = m["flows"]
                flows[r.name] += clip_flows
                rec["mean_flow"] = float(np.mean(clip_flows))
                rec["dynamic_degree"] = of.dynamic_degree(clip_flows, threshold)
            per_prompt.append(rec)
        sheets.append(_contact_sheet(out / "sheets" / f"prompt_{k}.png", prompt, rows,
                                     {name: m["shown"] for name, m in measured.items()}, seeds, video))

    # Over prompts: mean and Student-t 95% interval.
    keys = ["cosine", "vendi", "teacher_distance"] + (["clip_score"] if clip is not None else []) + \
        (["mean_flow", "dynamic_degree"] if video else [])
    summary = {}
    for r in rows:
        recs = [p for p in per_prompt if p["model"] == r.name]
        summary[r.name] = {key: dict(zip(("mean", "ci95"), mean_ci([p[key] for p in recs]))) for key in keys}
        if video:
            summary[r.name]["dynamic_degree_all_clips"] = of.dynamic_degree(flows[r.name], threshold)
    result = {
        "protocol": "Phased DMD Table 3 / video table: per prompt N seeds with shared noise; cosine and Vendi over "
                    "seeds; mean and Student-t 95% interval over prompts",
        "config": {**asdict(cfg), "out": str(out)},
        "features": {"path": features.path, "model": features.name,
                     "embedding": "image features (pooled / CLS; CLIP: projected); clips: mean of unit frame "
                                  "embeddings"},
        "clip": {"path": clip.path, "model": clip.name, "score": "100 max(cos, 0)"} if clip is not None else None,
        "lpips": LPIPS_NOTE,
        "reference": rows[0].name,
        "models": {r.name: {"kind": r.kind, **r.info} for r in rows},
        "prompts": prompts,
        "seeds": seeds,
        "video": {"flow": "OpenCV Farneback, mean magnitude over the interior (1/8 of each side left out), "
                          "pixels per frame of the decoded clip",
                  "dynamic_threshold": threshold,
                  "dynamic_degree": "share of clips whose mean flow exceeds the threshold (VBench's threshold "
                                    "6 min(H, W) / 256, applied to the clip mean)"} if video else None,
        "per_prompt": per_prompt,
        "summary": summary,
        "sheets": [str(p.relative_to(out)) for p in sheets],
    }
    io.write_json(out / "diversity.json", result)
    _write_csv(out / "diversity.csv", per_prompt)
    (out / "diversity.md").write_text(markdown_table(result) + "\n")
    return result


def _contact_sheet(path: Path, prompt: str, rows, shown: dict, seeds, video: bool) -> Path:
    """Models as rows, seeds as columns (``shown``: images in [0, 1]; video: each clip's middle frame)."""
    from pdmd_lab import viz

    images = {r.name: shown[r.name] * 2 - 1 for r in rows}
    captions = {r.name: f"NFE {r.info['nfe']}" for r in rows}
    title = f"{prompt!r}: same noise per column" + (" (middle frame of each clip)" if video else "")
    fig = viz.image_grid_figure(images, captions=captions, title=title, column_labels=[f"seed {s}" for s in seeds])
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _write_csv(path: Path, per_prompt: list[dict]) -> None:
    keys = list(dict.fromkeys(k for rec in per_prompt for k in rec))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for rec in per_prompt:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})


def _fmt(stat: dict, digits: int = 3) -> str:
    m, ci = stat["mean"], stat["ci95"]
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.{digits}f}" + ("" if ci is None or math.isnan(ci) else f" ± {ci:.{digits}f}")


def markdown_table(result: dict) -> str:
    """Diversity laid out like the paper's Table 3 (and its video table for clips)."""
    if "frames" in result:  # clips of a point: motion only
        return trajectory_markdown(result)
    s, models = result["summary"], result["models"]
    feat = result["features"]["model"]
    has_clip = result["clip"] is not None
    n_p, n_s = len(result["prompts"]), len(result["seeds"])
    head = ["model", "steps", "NFE", f"{feat} cosine ↓", "Vendi ↑", f"distance to {result['reference']} ↓"]
    head += ["CLIP score ↑"] if has_clip else []
    head += ["LPIPS ↑"]
    lines = [f"Diversity over {n_s} seeds per prompt, {n_p} prompt(s); mean ± 95% interval over prompts. "
             f"Features: {feat} ({result['features']['path']}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, info in models.items():
        row = [name, str(info["steps"]) + (f" (CFG {info['cfg']:g})" if info.get("cfg", 1.0) != 1.0 else ""),
               str(info["nfe"]), _fmt(s[name]["cosine"]), _fmt(s[name]["vendi"], 2),
               _fmt(s[name]["teacher_distance"], 4)]
        row += [_fmt(s[name]["clip_score"], 2)] if has_clip else []
        row += ["skipped"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"LPIPS: {result['lpips']}."]
    if result["video"] is not None:
        thr = result["video"]["dynamic_threshold"]
        lines += ["", f"Motion (OpenCV Farneback on the decoded frames; dynamic: mean flow > {thr:.3g} px/frame).", "",
                  "| model | mean optical flow (px/frame) | dynamic degree |", "|---|---|---|"]
        for name in models:
            lines.append(f"| {name} | {_fmt(s[name]['mean_flow'])} | "
                         f"{100 * s[name]['dynamic_degree_all_clips']:.1f}% |")
    return "\n".join(lines)


# Command line (``pdmd-lab diversity``) ------------------------------------------------------------------

def add_cli_arguments(s) -> None:
    s.add_argument("--models", required=True, help="comma-separated; the first is the reference (teacher): "
                   "diffusers:PATH[@STEPS], LoRA / full-weight student folders, or kit zoo names / folders")
    s.add_argument("--prompts", default="", help="prompts text file (one a line; encoded with the pipeline's text "
                   "encoders) or embeddings .safetensors; kit datasets: class indices, one a line (default: all)")
    s.add_argument("--seeds", type=int, default=8, help="seeds per prompt, the same noise for every model (paper: 8)")
    s.add_argument("--seed", type=int, default=0, help="first seed")
    s.add_argument("--features", default="", help="local feature model folder (DINOv2 / DINOv3 / CLIP vision, "
                   "transformers AutoModel + AutoImageProcessor); kit image datasets default to their classifier")
    s.add_argument("--clip", default="", help="local CLIPModel folder with its text tower, for the CLIP score")
    s.add_argument("--teacher-steps", type=int, default=50, help="Euler steps of diffusers: teachers (default 50)")
    s.add_argument("--teacher-cfg", type=float, default=5.0, help="CFG scale of diffusers: teachers (default 5)")
    s.add_argument("--teacher-shift", type=float, default=None, help="time shift of diffusers: teachers "
                   "(default: the pipeline scheduler's)")
    s.add_argument("--teacher-guidance", type=float, default=None, help="embedded guidance of guidance-distilled "
                   "diffusers: teachers (Flux-dev, e.g. 3.5); not CFG")
    s.add_argument("--latent-shape", default="", help="latent shape C,H,W or C,F,H,W (default: the first "
                   "student's, else the teacher's config)")
    s.add_argument("--vae", default="", help="pipeline folder whose vae/ decodes every model (default: each "
                   "model's own pipeline folder)")
    s.add_argument("--flow-threshold", type=float, default=None, help="video: dynamic degree threshold in px/frame "
                   "(default 6 min(H, W) / 256, VBench's scaled)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-sequence-length", type=int, default=256, help="text tokens when encoding prompts")
    s.add_argument("--device", default="", help="torch device (default: cuda when available, else cpu)")
    s.add_argument("--dtype", default="float32", help="weights of transformers and VAEs: float32 (default), "
                   "bfloat16, float16 (sampled under autocast)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--out", required=True, help="new or empty folder for the tables and contact sheets")


def config_from_cli(args: dict) -> DiversityConfig:
    shape = []
    if args.get("latent_shape"):
        try:
            shape = [int(v) for v in args["latent_shape"].split(",")]
        except ValueError:
            raise ValueError(f"--latent-shape must be integers like 16,128,128, got {args['latent_shape']!r}") \
                from None
    return DiversityConfig(models=args["models"].split(","), prompts=args["prompts"], seeds=args["seeds"],
                           seed=args["seed"], features=args["features"], clip=args["clip"],
                           teacher_steps=args["teacher_steps"], teacher_cfg=args["teacher_cfg"],
                           teacher_shift=args["teacher_shift"], teacher_guidance=args["teacher_guidance"],
                           latent_shape=shape, vae=args["vae"],
                           flow_threshold=args["flow_threshold"], batch_size=args["batch_size"],
                           max_sequence_length=args["max_sequence_length"], device=args["device"],
                           dtype=args["dtype"])

"""``--teacher diffusers:PATH``: data-free distillation of a real backbone from prompts.

Registers the ``diffusers`` teacher spec with the trainer (:func:`pdmd_lab.distill.trainer.register_teacher_loader`).
``PATH`` is a local pipeline folder (``model_index.json``) or a transformer folder, loaded with
``from_pretrained`` (nothing is downloaded). The backbone's settings live in the run config's ``net``
dict (:class:`BackboneOptions`: prompts, LoRA or full-weight experts, rank, alpha, latent shape,
weights dtype, gradient checkpointing), so a resumed run checks them like any other setting.

The starting net handed to the trainer builds the experts and critics itself: with LoRA experts it is
the base with adapters disabled (:class:`~pdmd_lab.backbones.lora.BaseView`), whose ``build_experts``
adds ``expert_1..K`` and whose ``build_critic`` re-initialises the ``fake_score`` adapter each phase;
with full-weight experts it is the backbone, copied as usual. Mixed precision (``bf16``) and
multi-GPU / FSDP come from ``accelerate launch`` and its config file, not from here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pdmd_lab import io
from pdmd_lab.backbones.adapters import load_backbone
from pdmd_lab.backbones.lora import LoRAConfig, LoRAExperts
from pdmd_lab.backbones.prompts import resolve_prompts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPERT_KINDS = ("lora", "full")
PAPER_LR = 5e-5  # Phased DMD: learning rate of the LoRA experts and the LoRA fake score


@dataclass
class BackboneOptions:
    prompts: str = ""  # prompts text file (encoded once by the pipeline's text encoders) or embeddings .safetensors
    experts: str = "lora"  # "lora": adapters on one frozen base; "full": full-weight copies of the teacher
    lora_rank: int = 64  # Phased DMD: 64
    lora_alpha: float = 8.0  # Phased DMD: 8
    lora_targets: list[str] = field(default_factory=list)  # empty: the model's attention and FFN layers
    latent_shape: list[int] = field(default_factory=list)  # empty: from the model config
    dtype: str = "float32"  # weights: float32, bfloat16 or float16 (mixed precision: accelerate)
    gradient_checkpointing: bool = False  # diffusers' checkpointing of the transformer blocks
    guidance: float | None = None  # embedded guidance of guidance-distilled models (Flux-dev)
    max_sequence_length: int = 256  # text tokens when encoding prompts

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("a diffusers: teacher needs --prompts (a prompts text file or an embeddings "
                             ".safetensors file)")
        if self.experts not in EXPERT_KINDS:
            raise ValueError(f"experts must be one of {EXPERT_KINDS}, got {self.experts!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        self.lora()  # checks rank and alpha
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.latent_shape):
            raise ValueError(f"--latent-shape must be positive integers like 16,128,128, got "
                             f"{','.join(map(str, self.latent_shape))}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"--guidance must be a finite number, got {self.guidance}")
        if self.max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")

    def lora(self) -> LoRAConfig:
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, target_modules=list(self.lora_targets))

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"option {unknown[0]!r} does not apply to a diffusers: teacher "
                             f"(its options: {', '.join(sorted(known))})")
        return cls(**d)


def diffusers_teacher(config, device, state):
    """Teacher loader of ``diffusers:PATH`` specs: ``(teacher, init_net, prior, info)`` for the trainer."""
    from pdmd_lab.distill.trainer import GaussianPrior, cache_dir

    path = config.teacher.split(":", 1)[1]
    opts = BackboneOptions.from_dict(dict(config.net))
    opts.prompts = str(Path(opts.prompts).resolve())
    prompts = resolve_prompts(opts.prompts, path, max_sequence_length=opts.max_sequence_length,
                              cache_dir=cache_dir() / "prompts")
    backbone = load_backbone(path, prompts, latent_shape=opts.latent_shape or None, dtype=DTYPES[opts.dtype],
                             guidance=opts.guidance, gradient_checkpointing=opts.gradient_checkpointing,
                             device=device)
    opts.latent_shape = list(backbone.shape)
    config.net = io.json_ready(opts)
    if opts.experts == "lora":
        lora = LoRAExperts(backbone, 0, opts.lora(), seed=config.seed)
        teacher = init = lora.teacher
    else:
        teacher = init = backbone
    prior = GaussianPrior(backbone.shape, prompts.num_prompts)
    return teacher, init, prior, {"dataset": "prompts", "shape": backbone.shape, "save_init": False}


def register() -> None:
    try:
        from pdmd_lab.distill.trainer import register_teacher_loader
    except ImportError:  # an engine without teacher loaders
        return
    register_teacher_loader("diffusers", diffusers_teacher)


register()


# Command line (``pdmd-lab distill``) --------------------------------------------------------------

_FLAGS = {  # option -> (flag, type, help)
    "prompts": ("--prompts", str, "diffusers: teachers: prompts text file (one a line; encoded once with the "
                "pipeline's text encoders) or an embeddings .safetensors file"),
    "experts": ("--experts", str, "lora (adapters on one frozen base; default) or full (full-weight copies)"),
    "lora_rank": ("--lora-rank", int, "LoRA rank of experts and fake score (default 64)"),
    "lora_alpha": ("--lora-alpha", float, "LoRA alpha (default 8)"),
    "latent_shape": ("--latent-shape", str, "latent shape C,H,W or C,F,H,W (default: from the model config)"),
    "dtype": ("--weights-dtype", str, "dtype of the base weights: float32 (default), bfloat16, float16"),
    "gradient_checkpointing": ("--gradient-checkpointing", bool, "diffusers' checkpointing of the blocks"),
    "guidance": ("--guidance", float, "embedded guidance of guidance-distilled models (Flux-dev)"),
    "max_sequence_length": ("--max-sequence-length", int, "text tokens when encoding prompts (default 256)"),
}


def add_cli_arguments(parser) -> None:
    """The flags of ``diffusers:PATH`` teachers, and ``--mixed-precision`` passed to accelerate."""
    g = parser.add_argument_group("real backbones (--teacher diffusers:PATH)")
    for name, (flag, kind, help_) in _FLAGS.items():
        if kind is bool:
            g.add_argument(flag, dest=f"backbone_{name}", action="store_const", const=True, default=None, help=help_)
        else:
            g.add_argument(flag, dest=f"backbone_{name}", type=kind, default=None, help=help_,
                           metavar=flag[2:].upper().replace("-", "_"))
    g.add_argument("--mixed-precision", dest="mixed_precision", choices=("no", "bf16", "fp16"), default=None,
                   help="accelerate mixed precision (same as `accelerate launch --mixed_precision`)")


def apply_cli(args: dict, flat: dict) -> dict:
    """Turn the backbone flags into the run config: ``net`` options and the LoRA learning-rate defaults.

    Returns the entries to update ``flat`` with. ``--mixed-precision`` is handed to accelerate through
    ``ACCELERATE_MIXED_PRECISION``. Backbone flags with another teacher are an error.
    """
    import os

    given = {name: args.get(f"backbone_{name}") for name in _FLAGS if args.get(f"backbone_{name}") is not None}
    if args.get("mixed_precision"):
        os.environ["ACCELERATE_MIXED_PRECISION"] = args["mixed_precision"]
    if not str(flat.get("teacher", "")).startswith("diffusers:"):
        if given:
            flag = _FLAGS[next(iter(given))][0]
            raise ValueError(f"{flag} applies to --teacher diffusers:PATH only")
        return {}
    if "latent_shape" in given:
        try:
            given["latent_shape"] = [int(s) for s in given["latent_shape"].split(",")]
        except ValueError:
            shape = given["latent_shape"]
            raise ValueError(f"--latent-shape must be integers like 16,128,128, got {shape!r}") from None
    net = {**dict(flat.get("net") or {}), **given}
    BackboneOptions.from_dict(net)  # one-line errors before anything loads
    out = {"net": net}
    if (net.get("experts") or "lora") == "lora":  # the paper's LoRA learning rate unless given
        out.update({k: flat.get(k) or PAPER_LR for k in ("lr_generator", "lr_fake")})
    return out

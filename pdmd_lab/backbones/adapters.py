"""Denoiser adapters for diffusers' flow-matching transformers: ``v = adapter(x, t, cond)``.

Each adapter maps the kit's call onto one diffusers class:

- ``SD3Transformer2DModel``: timestep ``1000 t``; latents ``(B, C, H, W)`` as they are; prompt and
  pooled embeddings.
- ``FluxTransformer2DModel``: timestep ``t`` (the model multiplies by 1000); 2x2 patches packed into
  tokens with ``img_ids`` / ``txt_ids``; prompt and pooled embeddings; embedded guidance (Flux-dev).
- ``WanTransformer3DModel``: timestep ``1000 t``; video latents ``(B, C, F, H, W)``; prompt
  embeddings; Wan2.2's ``transformer_2`` serves ``t < boundary_ratio``.
- ``QwenImageTransformer2DModel``: timestep ``t``; packed 2x2 patches with ``img_shapes`` for RoPE;
  prompt embeddings and their mask.

The scales are those of each diffusers pipeline (``StableDiffusion3Pipeline`` and ``WanPipeline`` pass
``sigma * 1000``; ``FluxPipeline`` and ``QwenImagePipeline`` pass ``sigma``); the ``t -> timestep``
conversion lives in :meth:`DiffusersDenoiser._timestep` and nowhere else.

Conditions stay integer labels, so every sampler and CFG work unchanged: the adapter holds a table of
precomputed prompt embeddings (:class:`~pdmd_lab.backbones.prompts.PromptEmbeddings`, ``P`` prompts
plus the empty prompt at index ``P``), ``num_classes = P``, and label ``P`` (or ``None``) is the
unconditional branch of classifier-free guidance. A dict with the pipeline's own names
(``prompt_embeds``, ``pooled_prompt_embeds``, ``prompt_embeds_mask``) may be passed instead of labels.

The kit's velocity convention is diffusers': flow matching ``v = noise - x0`` with ``t = sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from pdmd_lab import flow
from pdmd_lab.backbones.folders import ModelFolder, find_model  # noqa: F401  (adapters.find_model: same function)
from pdmd_lab.backbones.prompts import PromptEmbeddings
from pdmd_lab.nets import Denoiser

ADAPTERS: dict[str, type["DiffusersDenoiser"]] = {}


def register_adapter(cls: type["DiffusersDenoiser"]) -> type["DiffusersDenoiser"]:
    """Class decorator: make an adapter available for the diffusers class it names (``model_class``)."""
    ADAPTERS[cls.model_class] = cls
    return cls


def adapter_for(model_class: str) -> type["DiffusersDenoiser"]:
    if model_class not in ADAPTERS:
        raise ValueError(f"model class {model_class!r} is not supported; the kit knows: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_class]


@dataclass
class BackboneConfig:
    type: str = "diffusers"
    model_class: str = ""  # diffusers class name, e.g. "SD3Transformer2DModel"
    path: str = ""  # folder the transformer was loaded from (a pipeline or a transformer folder)
    num_classes: int = 0  # prompts P; label P is the empty prompt (CFG's unconditional branch)
    latent_shape: tuple[int, ...] = ()  # (C, H, W) for images, (C, F, H, W) for video: what samplers draw
    guidance: float | None = None  # embedded guidance of guidance-distilled models (Flux-dev); not CFG
    boundary_ratio: float | None = None  # Wan2.2: t >= ratio runs `transformer`, below it `transformer_2`
    extra: dict = field(default_factory=dict)


class DiffusersDenoiser(Denoiser):
    """A diffusers transformer behind the kit's interface ``v = net(x, t, cond)`` (``t`` in [0, 1]).

    ``transformer_2`` (Wan2.2) serves the samples with ``t < boundary_ratio``; both see the same call.
    """

    model_class: ClassVar[str] = ""
    timestep_scale: ClassVar[float] = 1000.0  # what the pipeline multiplies sigma by before the call
    lora_targets: ClassVar[tuple[str, ...]] = ()  # linear layers inside the blocks that LoRA adapts
    cfg_rule: ClassVar[str] = "standard"  # how the model's own pipeline combines CFG branches

    def __init__(self, transformer: nn.Module, prompts: PromptEmbeddings, config: BackboneConfig,
                 transformer_2: nn.Module | None = None):
        super().__init__()
        if type(transformer).__name__ != self.model_class:
            raise ValueError(f"{type(self).__name__} wraps {self.model_class}, got {type(transformer).__name__}")
        if (transformer_2 is None) != (config.boundary_ratio is None):
            raise ValueError("transformer_2 and boundary_ratio go together (Wan2.2 two-expert models)")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.prompts = prompts
        config.num_classes = prompts.num_prompts
        config.model_class = self.model_class
        if not config.latent_shape:
            config.latent_shape = self.default_latent_shape(transformer.config)
        config.latent_shape = tuple(int(s) for s in config.latent_shape)
        if any(s < 1 for s in config.latent_shape):
            raise ValueError(f"latent shape must have positive sizes, got {config.latent_shape}")
        self.check_latent_shape(config.latent_shape)
        self.check_prompts(prompts)
        self.config = config

    # Shapes ----------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.config.latent_shape

    @staticmethod
    def default_latent_shape(cfg) -> tuple[int, ...]:
        raise NotImplementedError

    def check_latent_shape(self, shape: tuple[int, ...]) -> None:
        pass

    text_width = "joint_attention_dim"  # the transformer config entry the prompt embeddings' width must equal
    pooled_width: str | None = None  # the config entry of the pooled embeddings' width, when the model takes them

    def check_prompts(self, prompts: PromptEmbeddings) -> None:
        """The prompt embeddings hold what this model reads, with its widths (one line, before any work)."""
        cfg = self.transformer.config
        want = getattr(cfg, self.text_width, None)
        got = prompts.prompt_embeds.shape[-1]
        if want is not None and got != want:
            raise ValueError(f"prompt_embeds are {got} wide; {self.model_class} takes {want} ({self.text_width})")
        if self.pooled_width is not None:
            if prompts.pooled_prompt_embeds is None:
                raise ValueError(f"{self.model_class} needs pooled_prompt_embeds; the embeddings hold none")
            want, got = getattr(cfg, self.pooled_width, None), prompts.pooled_prompt_embeds.shape[-1]
            if want is not None and got != want:
                raise ValueError(f"pooled_prompt_embeds are {got} wide; {self.model_class} takes {want} "
                                 f"({self.pooled_width})")

    def transformers(self) -> list[nn.Module]:
        """The diffusers models this adapter calls (two for Wan2.2)."""
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    # Conditions ------------------------------------------------------------------------------
    def condition(self, cond, batch: int, device) -> dict[str, torch.Tensor]:
        """Prompt tensors for a batch: gathered from the table by label, or a dict passed as is."""
        if isinstance(cond, dict):
            out = {}
            for k, v in cond.items():
                if v is None:
                    continue
                v = torch.as_tensor(v, device=device)
                out[k] = v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 and batch > 1 else v
            return out
        return self.prompts.gather(self._labels(cond, batch, device))

    def _timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The one place where the kit's ``t`` in [0, 1] becomes the model's timestep argument."""
        return self.timestep_scale * t

    # The call --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        b = x.shape[0]
        t = self._times(t, b, x)  # (B,)
        cond = self.condition(class_labels, b, x.device)
        if self.transformer_2 is None:
            return self.call_model(self.transformer, x, t, cond)
        # Wan2.2: the high-noise expert serves t >= boundary, the low-noise one the rest (per sample).
        high = t >= self.config.boundary_ratio
        if bool(high.all()):
            return self.call_model(self.transformer, x, t, cond)
        if not bool(high.any()):
            return self.call_model(self.transformer_2, x, t, cond)
        out = torch.empty_like(x)
        for model, rows in ((self.transformer, high), (self.transformer_2, ~high)):
            out[rows] = self.call_model(model, x[rows], t[rows], {k: v[rows] for k, v in cond.items()})
        return out

    def call_model(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        raise NotImplementedError

    def combine_cfg(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        """The model pipeline's own CFG combination (standard form unless the pipeline differs)."""
        return flow.cfg_velocity(v_uncond, v_cond, scale)


# Latent packing (Flux, Qwen-Image): 2x2 patches become tokens ------------------------------------

def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H/2 * W/2, 4C)``, the layout of ``FluxPipeline._pack_latents``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, H/2 * W/2, 4C) -> (B, C, H, W)``."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h2: int, w2: int, device, dtype) -> torch.Tensor:
    """Flux position ids of a ``h2 x w2`` token grid, ``(h2 * w2, 3)`` (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] += torch.arange(h2)[:, None]
    ids[..., 2] += torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class _PackedImageDenoiser(DiffusersDenoiser):
    """Shared by Flux and Qwen-Image: ``in_channels`` counts packed channels (4 per latent channel)."""

    timestep_scale = 1.0

    @staticmethod
    def default_latent_shape(cfg) -> tuple[int, ...]:
        return (cfg.in_channels // 4, 128, 128)  # 1024 x 1024 pixels with the 8x VAE

    def check_latent_shape(self, shape):
        if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(f"{self.model_class} latents are (C, H, W) with even H and W, got {shape}")
        if shape[0] * 4 != self.transformer.config.in_channels:
            raise ValueError(f"{self.model_class} with in_channels={self.transformer.config.in_channels} needs "
                             f"{self.transformer.config.in_channels // 4} latent channels, got {shape[0]}")


@register_adapter
class SD3Denoiser(DiffusersDenoiser):
    """``SD3Transformer2DModel`` (SD3, SD3.5): timestep ``1000 t``, prompt and pooled embeddings."""

    model_class = "SD3Transformer2DModel"
    pooled_width = "pooled_projection_dim"
    timestep_scale = 1000.0
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")

    @staticmethod
    def default_latent_shape(cfg) -> tuple[int, ...]:
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def check_latent_shape(self, shape):
        p = self.transformer.config.patch_size
        if len(shape) != 3 or shape[0] != self.transformer.config.in_channels or shape[1] % p or shape[2] % p:
            raise ValueError(f"SD3 latents are ({self.transformer.config.in_channels}, H, W) with H, W divisible "
                             f"by patch_size={p}, got {shape}")

    def call_model(self, model, x, t, cond):
        return model(hidden_states=x.to(model.dtype), timestep=self._timestep(t),
                     encoder_hidden_states=cond["prompt_embeds"].to(model.dtype),
                     pooled_projections=cond["pooled_prompt_embeds"].to(model.dtype),
                     return_dict=False)[0].to(x.dtype)


@register_adapter
class FluxDenoiser(_PackedImageDenoiser):
    """``FluxTransformer2DModel``: packed 2x2 latents, position ids, timestep ``t``, embedded guidance."""

    model_class = "FluxTransformer2DModel"
    pooled_width = "pooled_projection_dim"
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2", "proj_mlp", "proj_out")

    def call_model(self, model, x, t, cond):
        b, _, h, w = x.shape
        dtype = model.dtype
        embeds = cond["prompt_embeds"].to(dtype)
        guidance = None
        if model.config.guidance_embeds:
            if self.config.guidance is None:
                raise ValueError("this Flux model embeds guidance: set the adapter's guidance (e.g. 3.5)")
            guidance = torch.full((b,), float(self.config.guidance), device=x.device, dtype=torch.float32)
        v = model(hidden_states=pack_latents(x).to(dtype), timestep=self._timestep(t).to(dtype), guidance=guidance,
                  pooled_projections=cond["pooled_prompt_embeds"].to(dtype), encoder_hidden_states=embeds,
                  txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype),
                  img_ids=image_ids(h // 2, w // 2, x.device, dtype), return_dict=False)[0]
        return unpack_latents(v, h, w).to(x.dtype)


@register_adapter
class WanDenoiser(DiffusersDenoiser):
    """``WanTransformer3DModel`` (Wan2.1, Wan2.2): video latents ``(B, C, F, H, W)``, timestep ``1000 t``."""

    model_class = "WanTransformer3DModel"
    text_width = "text_dim"
    timestep_scale = 1000.0
    lora_targets = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                    "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")

    @staticmethod
    def default_latent_shape(cfg) -> tuple[int, ...]:
        return (cfg.in_channels, 21, 60, 104)  # 81 frames at 480 x 832 with the Wan VAE (4x time, 8x space)

    def check_latent_shape(self, shape):
        pt, ph, pw = self.transformer.config.patch_size
        c = self.transformer.config.in_channels
        if len(shape) != 4 or shape[0] != c or shape[1] % pt or shape[2] % ph or shape[3] % pw:
            raise ValueError(f"Wan latents are ({c}, F, H, W) divisible by patch_size={(pt, ph, pw)}, got {shape}")

    def call_model(self, model, x, t, cond):
        return model(hidden_states=x.to(model.dtype), timestep=self._timestep(t),
                     encoder_hidden_states=cond["prompt_embeds"].to(model.dtype), return_dict=False)[0].to(x.dtype)


@register_adapter
class QwenImageDenoiser(_PackedImageDenoiser):
    """``QwenImageTransformer2DModel``: packed 2x2 latents, ``img_shapes`` for RoPE, text mask, timestep ``t``.

    The Qwen-Image pipeline rescales its CFG output to the conditional branch's norm per token
    (:meth:`combine_cfg`); training here uses the kit's standard CFG (``docs/conventions.md`` §1).
    """

    model_class = "QwenImageTransformer2DModel"
    cfg_rule = "qwen-renorm"
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
                    "txt_mlp.net.2")

    def call_model(self, model, x, t, cond):
        b, _, h, w = x.shape
        dtype = model.dtype
        guidance = None
        if model.config.guidance_embeds:
            if self.config.guidance is None:
                raise ValueError("this Qwen-Image model embeds guidance: set the adapter's guidance")
            guidance = torch.full((b,), float(self.config.guidance), device=x.device, dtype=torch.float32)
        mask = cond.get("prompt_embeds_mask")
        v = model(hidden_states=pack_latents(x).to(dtype), timestep=self._timestep(t).to(dtype), guidance=guidance,
                  encoder_hidden_states=cond["prompt_embeds"].to(dtype), encoder_hidden_states_mask=mask,
                  img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return unpack_latents(v, h, w).to(x.dtype)

    def combine_cfg(self, v_uncond, v_cond, scale):
        """``QwenImagePipeline``: standard CFG, then each token rescaled to the conditional's norm."""
        comb = pack_latents(flow.cfg_velocity(v_uncond, v_cond, scale))
        cond = pack_latents(v_cond)
        comb = comb * (cond.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
        return unpack_latents(comb, v_cond.shape[-2], v_cond.shape[-1])


# Loading from local folders ----------------------------------------------------------------------



def load_transformer(folder: ModelFolder, subfolder: str | None, dtype=None) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, folder.model_class)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return cls.from_pretrained(str(folder.root), torch_dtype=dtype, local_files_only=True, **kwargs)


def load_backbone(path, prompts: PromptEmbeddings, *, latent_shape=None, dtype=None, guidance: float | None = None,
                  device="cpu", gradient_checkpointing: bool = False) -> DiffusersDenoiser:
    """Load the transformer(s) of a local pipeline or transformer folder behind the kit's interface.

    Nothing is downloaded (``local_files_only``). ``dtype`` (e.g. ``torch.bfloat16``) is the weights'
    dtype; ``gradient_checkpointing`` turns on diffusers' own checkpointing of the blocks.
    """
    folder = find_model(path)
    cls = adapter_for(folder.model_class)
    transformer = load_transformer(folder, folder.subfolder, dtype)
    transformer_2 = load_transformer(folder, folder.subfolder_2, dtype) if folder.subfolder_2 else None
    ratio = folder.boundary_ratio if transformer_2 is not None else None
    config = BackboneConfig(path=str(Path(path).resolve()), latent_shape=tuple(latent_shape or ()), guidance=guidance,
                            boundary_ratio=ratio)
    net = cls(transformer, prompts, config, transformer_2=transformer_2)
    net.requires_grad_(False).eval()
    if gradient_checkpointing:
        for m in net.transformers():
            m.enable_gradient_checkpointing()
    return net.to(device)

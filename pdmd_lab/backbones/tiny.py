"""Tiny random configs of the real diffusers classes (the sizes diffusers' own fast tests use).

For tests, the memory benchmark and trying the real-backbone path on a laptop: :func:`save_tiny`
writes a transformer folder with ``save_pretrained`` that :func:`~pdmd_lab.backbones.load_backbone`
reads back like a real model, plus a random prompt table with the right widths.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from pdmd_lab.backbones.prompts import PromptEmbeddings


def tiny_sd3(num_layers: int = 4, **overrides):
    from diffusers import SD3Transformer2DModel

    cfg = dict(sample_size=32, patch_size=1, in_channels=4, num_layers=num_layers, attention_head_dim=8,
               num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
               out_channels=4)
    return SD3Transformer2DModel(**{**cfg, **overrides})


def tiny_flux(guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds)


def tiny_wan():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def tiny_qwen():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                       guidance_embeds=False, axes_dims_rope=(8, 4, 4))


TINY = {"sd3": tiny_sd3, "flux": tiny_flux, "wan": tiny_wan, "qwen": tiny_qwen}
# Small latents that keep CPU tests fast: (C, H, W) or (C, F, H, W).
TINY_LATENTS = {"sd3": (4, 8, 8), "flux": (1, 8, 8), "wan": (16, 2, 4, 4), "qwen": (4, 8, 8)}


def tiny_model(kind: str, seed: int = 0, **kwargs):
    if kind not in TINY:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of: {', '.join(TINY)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TINY[kind](**kwargs)


def save_tiny(kind: str, folder, seed: int = 0, **kwargs) -> Path:
    """Write a tiny random ``kind`` transformer to ``folder`` with ``save_pretrained``."""
    model = tiny_model(kind, seed, **kwargs)
    model.save_pretrained(str(folder))
    return Path(folder)


def random_prompts(kind_or_model, num_prompts: int = 2, seq_len: int = 7, seed: int = 0) -> PromptEmbeddings:
    """A table of random prompt embeddings with the widths the model expects (pooled / mask where used).

    ``kind_or_model``: a tiny kind, a model, or a saved transformer folder (its ``config.json`` is read).
    """
    if isinstance(kind_or_model, (str, Path)) and Path(kind_or_model, "config.json").is_file():
        raw = json.loads(Path(kind_or_model, "config.json").read_text())
        cfg, name = SimpleNamespace(**raw), raw["_class_name"]
    else:
        model = tiny_model(kind_or_model) if isinstance(kind_or_model, str) else kind_or_model
        cfg, name = model.config, type(model).__name__
    g = torch.Generator().manual_seed(seed)
    n = num_prompts + 1
    width = cfg.text_dim if name == "WanTransformer3DModel" else cfg.joint_attention_dim
    embeds = torch.randn(n, seq_len, width, generator=g)
    pooled = mask = None
    if name in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        pooled = torch.randn(n, cfg.pooled_projection_dim, generator=g)
    if name == "QwenImageTransformer2DModel":  # prompts of different lengths, zero-padded
        lengths = torch.randint(2, seq_len + 1, (n,), generator=g)
        lengths[0] = seq_len
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
        embeds = embeds * mask[..., None]
    return PromptEmbeddings([f"prompt {k}" for k in range(num_prompts)], embeds, pooled, mask)

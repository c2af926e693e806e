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


# Tiny pipeline folders: transformer, scheduler, VAE (and for Wan a text encoder), as save_pretrained writes them

TINY_WORDS = ("<pad> </s> <unk> a the an of on in with and red blue green cat dog bird car boat grass sky sea "
              "street city tree runs flies sits rolls slowly fast prompt 0 1 2 3 4 5 6 7").split()


def tiny_tokenizer(words=TINY_WORDS):
    """A word-level fast tokenizer over ``words`` (unknown words map to ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_vae(kind: str, seed: int = 0):
    """A random VAE whose latents fit :data:`TINY_LATENTS`: SD3 / Flux ``AutoencoderKL`` (no downsampling, 4 / 1
    latent channels: 8x8 latents decode to 8x8 images); Wan ``AutoencoderKLWan`` (16 channels, 8x spatial and
    4x temporal upsampling: ``(16, 2, 4, 4)`` decodes to 5 frames of 32x32); Qwen-Image
    ``AutoencoderKLQwenImage`` (4 channels, 8x spatial: ``(4, 8, 8)`` decodes to 64x64)."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage, AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("sd3", "flux"):
            return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                                 latent_channels=4 if kind == "sd3" else 1, norm_num_groups=1, use_quant_conv=False,
                                 use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
        if kind == "qwen":
            return AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                          temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                          latents_std=[1.0] * 4)
        if kind == "wan":
            return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                    temperal_downsample=[False, True, True])
    raise ValueError(f"no tiny VAE for {kind!r}; choose one of: {', '.join(TINY)}")


def save_tiny_pipeline(kind: str, folder, seed: int = 0, *, vae: bool = True, text_encoder: bool = False,
                       shift: float = 3.0) -> Path:
    """Write a tiny stock pipeline folder (``StableDiffusion3Pipeline``, ``FluxPipeline``, ``WanPipeline`` or
    ``QwenImagePipeline``) with ``save_pretrained``: the tiny transformer, a
    ``FlowMatchEulerDiscreteScheduler(shift)``, a tiny VAE (``vae``) and, for Wan, a tiny UMT5 text encoder
    with a word-level tokenizer (``text_encoder``), so prompts text files can be encoded. The others have no
    text encoders here: give them an embeddings file (:func:`random_prompts`)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        QwenImagePipeline,
        StableDiffusion3Pipeline,
        WanPipeline,
    )

    parts = {"transformer": tiny_model(kind, seed), "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift),
             "vae": tiny_vae(kind, seed) if vae else None, "text_encoder": None, "tokenizer": None}
    if text_encoder and kind != "wan":
        raise ValueError(f"the tiny {kind} pipeline has no text encoders; use an embeddings file")
    if kind == "sd3":
        pipe = StableDiffusion3Pipeline(**parts, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                        tokenizer_3=None)
    elif kind == "flux":
        pipe = FluxPipeline(**parts, text_encoder_2=None, tokenizer_2=None)
    elif kind == "qwen":
        pipe = QwenImagePipeline(**parts)
    elif kind == "wan":
        if text_encoder:
            from transformers import UMT5Config, UMT5EncoderModel

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                parts["text_encoder"] = UMT5EncoderModel(UMT5Config(
                    vocab_size=len(TINY_WORDS), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8)).eval()
            parts["tokenizer"] = tiny_tokenizer()
        pipe = WanPipeline(**parts)
    else:
        raise ValueError(f"no tiny pipeline for {kind!r}; choose one of: {', '.join(TINY)}")
    pipe.save_pretrained(str(folder))
    return Path(folder)


def save_tiny_features(kind: str, folder, seed: int = 0) -> Path:
    """Write a tiny random image feature model with its image processor (32x32 inputs) with ``save_pretrained``,
    for ``pdmd-lab diversity --features`` / ``--clip`` on a laptop: ``"dinov2"`` (``Dinov2Model``),
    ``"clip-vision"`` (``CLIPVisionModel``) or ``"clip"`` (``CLIPModel`` with its text tower and a word-level
    tokenizer). Random weights: the numbers they give check the plumbing, not image quality."""
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
    )

    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37)
    text = dict(vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    crop = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "dinov2":
            model = Dinov2Model(Dinov2Config(**{**vision, "num_hidden_layers": 2}))
            processor = BitImageProcessor(**crop)
        elif kind == "clip-vision":
            model = CLIPVisionModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16).vision_config)
            processor = CLIPImageProcessor(**crop)
        elif kind == "clip":
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
            processor = CLIPImageProcessor(**crop)
        else:
            raise ValueError(f"unknown tiny feature model {kind!r}; choose dinov2, clip-vision or clip")
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    if kind == "clip":
        tiny_tokenizer().save_pretrained(str(folder))
    return Path(folder)

"""Prompts as integer labels: a table of precomputed text embeddings, encoded once.

A prompts file is plain text, one prompt a line (blank lines and lines starting with ``#`` are
skipped). :class:`PromptEmbeddings` holds the ``P`` prompts' embeddings plus the empty prompt's at
index ``P`` (the unconditional branch of classifier-free guidance), so label ``k`` means prompt ``k``
and ``num_classes = P``.

Embeddings come from the pipeline's own local text encoders (run once, then cached as a safetensors
file keyed by the prompts and the pipeline folder), or from an embeddings file written earlier
(``.safetensors`` with ``prompt_embeds`` ``(P + 1, L, D)`` and, where the model takes them,
``pooled_prompt_embeds`` ``(P + 1, D')`` and ``prompt_embeds_mask`` ``(P + 1, L)``; the last row is
the empty prompt; the prompts are in the file's metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

KEYS = ("prompt_embeds", "pooled_prompt_embeds", "prompt_embeds_mask")


def read_prompts(path) -> list[str]:
    """The prompts of a text file, one a line; a missing or empty file raises a one-line ValueError."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompts file {str(p)!r} does not exist")
    prompts = [line.strip() for line in p.read_text().splitlines()]
    prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {str(p)!r} holds no prompts (one prompt a line)")
    return prompts


class PromptEmbeddings(nn.Module):
    """``P`` prompts plus the empty prompt (row ``P``) as tensors; labels index into them.

    The tensors are non-persistent buffers: they follow the adapter to its device but never enter a
    model's ``state_dict`` (they are conditions, not weights); :meth:`save` writes them on their own.
    """

    def __init__(self, prompts: list[str], prompt_embeds: torch.Tensor,
                 pooled_prompt_embeds: torch.Tensor | None = None, prompt_embeds_mask: torch.Tensor | None = None):
        super().__init__()
        if not prompts:
            raise ValueError("at least one prompt is needed")
        n = len(prompts) + 1
        for name, tensor in zip(KEYS, (prompt_embeds, pooled_prompt_embeds, prompt_embeds_mask)):
            if tensor is not None and tensor.shape[0] != n:
                raise ValueError(f"{name} has {tensor.shape[0]} rows; {len(prompts)} prompts + the empty prompt "
                                 f"need {n}")
            if tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"{name} holds non-finite values (NaN or inf)")
        self.prompts = list(prompts)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)  # (P + 1, L, D)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds, persistent=False)  # (P + 1, D')
        self.register_buffer("prompt_embeds_mask", prompt_embeds_mask, persistent=False)  # (P + 1, L)

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}

    def gather(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The condition tensors of a batch of labels ``(B,)``; label ``P`` is the empty prompt."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_prompts):
            raise ValueError(f"labels must be in [0, {self.num_prompts}] ({self.num_prompts} = the empty prompt), "
                             f"got {labels.min().item()}..{labels.max().item()}")
        return {k: v[labels] for k, v in self.tensors().items()}

    def row(self, k: int) -> dict[str, torch.Tensor]:
        """Prompt ``k`` (``P`` = the empty prompt) as a batch of one, with the pipelines' argument names."""
        return {key: v[k:k + 1] for key, v in self.tensors().items()}

    def save(self, path) -> Path:
        """Write the table as one safetensors file (atomic), prompts in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}, str(tmp),
                  metadata={"prompts": json.dumps(self.prompts)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "PromptEmbeddings":
        """Read an embeddings file written by :meth:`save` (or by hand in the same layout)."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"embeddings file {str(p)!r} does not exist")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types on a corrupt file
            raise ValueError(f"corrupt embeddings file {p}: {e}") from None
        if "prompt_embeds" not in tensors:
            raise ValueError(f"embeddings file {str(p)!r} has no 'prompt_embeds' tensor")
        n = tensors["prompt_embeds"].shape[0]
        prompts = json.loads(meta["prompts"]) if "prompts" in meta else [f"prompt {k}" for k in range(n - 1)]
        if n < 2:
            raise ValueError(f"embeddings file {str(p)!r} needs at least one prompt plus the empty prompt")
        return cls(prompts, *(tensors.get(k) for k in KEYS))


# Encoding with the pipeline's own text encoders ----------------------------------------------------

def _encode(pipe, model_class: str, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
    """Run a pipeline's ``encode_prompt`` for ``texts``, with each pipeline's own signature."""
    device = pipe._execution_device
    if model_class == "SD3Transformer2DModel":
        pe, _, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, prompt_3=None, device=device,
                                              do_classifier_free_guidance=False,
                                              max_sequence_length=max_sequence_length)
        return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
    if model_class == "FluxTransformer2DModel":
        pe, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, device=device,
                                           max_sequence_length=max_sequence_length)
        return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
    if model_class == "WanTransformer3DModel":
        pe, _ = pipe.encode_prompt(prompt=texts, do_classifier_free_guidance=False,
                                   max_sequence_length=max_sequence_length, device=device)
        return {"prompt_embeds": pe}
    if model_class == "QwenImageTransformer2DModel":
        pe, mask = pipe.encode_prompt(prompt=texts, device=device, max_sequence_length=max_sequence_length)
        return {"prompt_embeds": pe, "prompt_embeds_mask": mask}
    raise ValueError(f"no prompt encoder for model class {model_class!r}")


def _cache_key(folder: str, prompts: list[str], max_sequence_length: int) -> str:
    h = hashlib.sha256(json.dumps([str(Path(folder).resolve()), prompts, max_sequence_length]).encode())
    return h.hexdigest()[:16]


_MEMORY_CACHE: dict[str, PromptEmbeddings] = {}


def encode_prompts(folder, prompts: list[str], *, max_sequence_length: int = 256, cache_dir=None,
                   device="cpu") -> PromptEmbeddings:
    """Embed ``prompts`` (and the empty prompt) with the local text encoders of the pipeline in ``folder``.

    Runs once: the result is kept in memory and, with ``cache_dir``, as
    ``prompt_embeds-<hash>.safetensors`` there. A folder without text encoders raises a ValueError
    that asks for an embeddings file instead. Nothing is downloaded.
    """
    from pdmd_lab.backbones.folders import find_model

    model = find_model(folder)
    key = _cache_key(str(model.root), prompts, max_sequence_length)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    cached = Path(cache_dir) / f"prompt_embeds-{key}.safetensors" if cache_dir else None
    if cached is not None and cached.is_file():
        table = PromptEmbeddings.load(cached)
        _MEMORY_CACHE[key] = table
        return table
    index = model.root / "model_index.json"
    spec = json.loads(index.read_text()) if model.is_pipeline else {}
    encoders = [k for k in spec if k.startswith("text_encoder") and spec[k] and spec[k][1] is not None]
    if not encoders or not all((model.root / k).is_dir() for k in encoders):
        raise ValueError(f"{str(model.root)!r} has no local text encoders; pass an embeddings file "
                         f"(.safetensors) as --prompts instead")
    from diffusers import DiffusionPipeline

    skip = {k: None for k in spec if k.startswith(("transformer", "vae", "image_encoder", "feature_extractor"))
            and not k.startswith("_")}
    pipe = DiffusionPipeline.from_pretrained(str(model.root), local_files_only=True, **skip).to(device)
    with torch.no_grad():
        t = _encode(pipe, model.model_class, list(prompts) + [""], max_sequence_length)
    t = {k: v.detach().cpu() for k, v in t.items()}
    table = PromptEmbeddings(list(prompts), t["prompt_embeds"], t.get("pooled_prompt_embeds"),
                             t.get("prompt_embeds_mask"))
    del pipe
    if cached is not None:
        table.save(cached)
    _MEMORY_CACHE[key] = table
    return table


def resolve_prompts(spec, folder=None, *, max_sequence_length: int = 256, cache_dir=None) -> PromptEmbeddings:
    """``--prompts`` as given on the command line: an embeddings file (``.safetensors``) or a prompts text file.

    A text file is encoded with the text encoders of the pipeline in ``folder``.
    """
    p = Path(spec)
    if p.suffix == ".safetensors":
        return PromptEmbeddings.load(p)
    prompts = read_prompts(p)
    if folder is None:
        raise ValueError("a prompts text file needs a pipeline folder with text encoders to embed it")
    return encode_prompts(folder, prompts, max_sequence_length=max_sequence_length, cache_dir=cache_dir)

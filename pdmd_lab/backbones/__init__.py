"""Real backbones: diffusers transformers behind the Denoiser interface, prompts as labels, LoRA experts.

* :mod:`~pdmd_lab.backbones.adapters`: ``SD3Transformer2DModel``, ``FluxTransformer2DModel``,
  ``WanTransformer3DModel``, ``QwenImageTransformer2DModel`` adapters and their registry.
* :mod:`~pdmd_lab.backbones.prompts`: prompts files, embeddings encoded once, the label -> embedding table.
* :mod:`~pdmd_lab.backbones.lora`: LoRA experts and fake score on one frozen base.
* :mod:`~pdmd_lab.backbones.students`: saved students (adapters only, or full-weight experts).
* :mod:`~pdmd_lab.backbones.distill`: the ``diffusers:PATH`` teacher spec of ``pdmd-lab distill``.
* :mod:`~pdmd_lab.backbones.pipelines`: a distilled student inside the stock diffusers pipeline.
* :mod:`~pdmd_lab.backbones.memory`: peak memory of one generator step, LoRA vs full experts vs full backprop.
"""

from pdmd_lab.backbones import distill as _distill  # noqa: F401  (registers the diffusers: teacher spec)
from pdmd_lab.backbones.adapters import (
    ADAPTERS,
    BackboneConfig,
    DiffusersDenoiser,
    adapter_for,
    find_model,
    load_backbone,
    register_adapter,
)
from pdmd_lab.backbones.lora import AdapterView, LoRAConfig, LoRAExperts
from pdmd_lab.backbones.prompts import PromptEmbeddings, encode_prompts, read_prompts, resolve_prompts
from pdmd_lab.backbones.students import FullStudent, LoRAStudent

__all__ = [
    "ADAPTERS", "AdapterView", "BackboneConfig", "DiffusersDenoiser", "FullStudent", "LoRAConfig", "LoRAExperts",
    "LoRAStudent", "PromptEmbeddings", "adapter_for", "encode_prompts", "find_model", "load_backbone", "read_prompts",
    "register_adapter", "resolve_prompts",
]


def _register_bench() -> None:
    """``pdmd-lab bench`` also measures one generator step on a tiny SD3 (:mod:`pdmd_lab.backbones.memory`)."""
    from pdmd_lab import bench
    from pdmd_lab.backbones.memory import bench_backbone_memory

    bench.EXTRA_BENCHES.setdefault("backbone_memory", bench_backbone_memory)


_register_bench()

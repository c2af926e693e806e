"""Saved students of real backbones: one folder format each, loaded through :func:`pdmd_lab.io.load_folder`.

* :class:`LoRAStudent` (``kind: lora-student``): the expert adapters only, ``expert_k.safetensors`` in
  diffusers' LoRA format, plus the prompt table and ``config.json`` with ``base``, the folder of the
  base model (loaded again with ``from_pretrained``). Memory when sampling: one base plus adapters.
* :class:`FullStudent` (``kind: backbone-student``): full-weight experts, ``expert_k.safetensors``
  each the whole transformer (``transformer.*`` keys), for students trained without LoRA.

Both are :class:`~pdmd_lab.student.Student` s: ``sample(labels, seed)`` and every kit tool work on them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pdmd_lab import io
from pdmd_lab.backbones.adapters import DiffusersDenoiser, load_backbone
from pdmd_lab.backbones.lora import AdapterView, BaseView, LoRAConfig, LoRAExperts
from pdmd_lab.backbones.prompts import PromptEmbeddings
from pdmd_lab.student import Student

LORA_KIND = "lora-student"
FULL_KIND = "backbone-student"
PROMPTS_FILE = "prompt_embeds.safetensors"
_KNOWN = {"kind", "base", "model_class", "latent_shape", "guidance", "num_classes", "sampler", "dataset",
          "boundaries", "step_times", "lora", "experts", "prompts", "shape", "net"}


def _backbone_config(b: DiffusersDenoiser) -> dict:
    c = b.config
    return {"base": c.path, "model_class": c.model_class, "latent_shape": list(c.latent_shape),
            "guidance": c.guidance, "num_classes": c.num_classes, "prompts": PROMPTS_FILE}


class LoRAStudent(Student):
    """A student whose experts are LoRA adapters (:class:`~pdmd_lab.backbones.lora.AdapterView`) on one base."""

    def __init__(self, experts: list[AdapterView], boundaries, step_times, *, sampler: str = "euler",
                 dataset: str = "", shape: tuple[int, ...] = (), meta: dict | None = None):
        if not experts or not all(isinstance(e, AdapterView) and e.adapter_name for e in experts):
            raise ValueError("a LoRA student needs LoRA expert views (LoRAExperts.build_experts)")
        super().__init__(experts, boundaries, step_times, sampler=sampler, dataset=dataset,
                         shape=shape or experts[0].shape, meta=meta)

    @property
    def lora(self) -> LoRAExperts:
        return self.experts[0].owner

    @property
    def backbone(self) -> DiffusersDenoiser:
        return self.lora.backbone

    def config(self) -> dict:
        return {"kind": LORA_KIND, **_backbone_config(self.backbone), "sampler": self.sampler,
                "dataset": self.dataset, "boundaries": self.boundaries.tolist(),
                "step_times": self.step_times.tolist(), "lora": asdict(self.lora.config),
                "experts": [e.adapter_name for e in self.experts], **self.meta}

    def save(self, path, extra: dict | None = None) -> Path:
        """Write the expert adapters, the prompt table and ``config.json`` (each file atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for e in self.experts:
            self.lora.save_adapter(e.adapter_name, path)
        self.backbone.prompts.save(path / PROMPTS_FILE)
        io.write_json(path / io.CONFIG, {**self.config(), **(extra or {})})
        return path

    @classmethod
    def from_folder(cls, path, cfg: dict, device="cpu", *, dtype=None, base: str | None = None) -> "LoRAStudent":
        """Rebuild a saved student: the base from its folder (or ``base``), then the adapters."""
        prompts = PromptEmbeddings.load(Path(path) / cfg.get("prompts", PROMPTS_FILE))
        backbone = load_backbone(base or cfg["base"], prompts, latent_shape=cfg["latent_shape"], dtype=dtype,
                                 guidance=cfg.get("guidance"), device=device)
        lora = LoRAExperts(backbone, 0, LoRAConfig(**cfg["lora"]))
        experts = [lora.add(name) for name in cfg["experts"]]
        for name in cfg["experts"]:
            lora.load_adapter(name, path)
        for e in experts:
            e.requires_grad_(False)
        student = cls(experts, cfg["boundaries"], cfg["step_times"], sampler=cfg["sampler"],
                      dataset=cfg.get("dataset", ""), meta={k: v for k, v in cfg.items() if k not in _KNOWN})
        return student.to(device).eval()

    @classmethod
    def load(cls, path, device="cpu", **kwargs) -> "LoRAStudent":
        cfg = io.read_config(path)
        if cfg.get("kind") != LORA_KIND:
            raise ValueError(f"{str(path)!r} is not a LoRA student folder (its config says kind={cfg.get('kind')!r})")
        return cls.from_folder(path, cfg, device, **kwargs)


class FullStudent(Student):
    """A student of full-weight experts, each a whole :class:`DiffusersDenoiser`."""

    def __init__(self, experts: list[DiffusersDenoiser], boundaries, step_times, **kwargs):
        if not experts or not all(isinstance(e, DiffusersDenoiser) for e in experts):
            raise ValueError("a backbone student needs DiffusersDenoiser experts")
        kwargs.setdefault("shape", experts[0].shape)
        super().__init__(experts, boundaries, step_times, **kwargs)

    def config(self) -> dict:
        return {"kind": FULL_KIND, **_backbone_config(self.experts[0]), "sampler": self.sampler,
                "dataset": self.dataset, "boundaries": self.boundaries.tolist(),
                "step_times": self.step_times.tolist(),
                "experts": [f"expert_{k + 1}" for k in range(len(self.experts))], **self.meta}

    def save(self, path, extra: dict | None = None) -> Path:
        path = Path(path)
        tensors = {f"expert_{k + 1}": e.state_dict() for k, e in enumerate(self.experts)}
        io.save_model_files(path, {**self.config(), **(extra or {})}, tensors)
        self.experts[0].prompts.save(path / PROMPTS_FILE)
        return path

    @classmethod
    def from_folder(cls, path, cfg: dict, device="cpu", *, dtype=None) -> "FullStudent":
        prompts = PromptEmbeddings.load(Path(path) / cfg.get("prompts", PROMPTS_FILE))
        experts = []
        for name in cfg["experts"]:
            e = load_backbone(cfg["base"], prompts, latent_shape=cfg["latent_shape"], dtype=dtype,
                              guidance=cfg.get("guidance"))
            io.load_weights(e, io.read_tensors(path, name), str(path))
            experts.append(e.requires_grad_(False).eval())
        student = cls(experts, cfg["boundaries"], cfg["step_times"], sampler=cfg["sampler"],
                      dataset=cfg.get("dataset", ""), meta={k: v for k, v in cfg.items() if k not in _KNOWN})
        return student.to(device).eval()


def student_class_for(init_net) -> type[Student]:
    """The student class a trainer should build for experts made from ``init_net``."""
    if isinstance(init_net, AdapterView):
        return LoRAStudent
    if isinstance(init_net, DiffusersDenoiser):
        return FullStudent
    return Student


# The trainer asks its starting net which student to build (``student_class``). The nets live below this
# module, so their students are attached here, where both are known (the nets never import their students).
DiffusersDenoiser.student_class = FullStudent  # full-weight experts copied from a backbone
BaseView.student_class = LoRAStudent  # adapters on one frozen base


if hasattr(io, "register_kind"):
    io.register_kind(LORA_KIND, LoRAStudent.from_folder)
    io.register_kind(FULL_KIND, FullStudent.from_folder)

"""LoRA experts on one frozen base (Phased DMD §4: experts and fake score as LoRA adapters).

:class:`LoRAExperts` adds peft adapters ``expert_1 .. expert_K`` and ``fake_score`` to the diffusers
transformer(s) of a :class:`~pdmd_lab.backbones.adapters.DiffusersDenoiser` (``LoraConfig`` +
diffusers ``add_adapter``) and hands out one :class:`AdapterView` per adapter. A view is called like
any Denoiser (``v = view(x, t, labels)``): it activates its adapter with ``set_adapter`` and runs the
shared base; its ``parameters()`` are that adapter's LoRA tensors only, so optimizers, gradient
clipping, ``requires_grad_`` and DDP see exactly one expert. The teacher is the view with every
adapter disabled. Memory stays one base model plus ``K + 1`` adapters.

Defaults follow the Phased DMD paper: rank 64, alpha 8 (and learning rate 5e-5, the CLI's default for
``diffusers:`` teachers).

:meth:`LoRAExperts.save_adapter` writes one adapter in diffusers' LoRA format (keys
``transformer.<module>.lora_A.weight``, the ``LoraConfig`` in the file's metadata), so the stock
``pipe.load_lora_weights(folder, weight_name="expert_1.safetensors")`` reads it; the saved student
(:class:`~pdmd_lab.backbones.students.LoRAStudent`) is those files plus the prompt table and a
``config.json`` naming the base model folder.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pdmd_lab.backbones.adapters import DiffusersDenoiser

FAKE_SCORE = "fake_score"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


@dataclass
class LoRAConfig:
    rank: int = 64  # Phased DMD: rank 64
    alpha: float = 8.0  # Phased DMD: alpha 8 (scale alpha / rank)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # empty: the adapter's attention and FFN layers

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")


def target_regex(backbone: DiffusersDenoiser, config: LoRAConfig) -> str:
    """peft ``target_modules`` as one regex: the named linear layers inside the transformer blocks."""
    names = config.target_modules or list(backbone.lora_targets)
    return r".*blocks\.\d+\.(" + "|".join(re.escape(n) for n in names) + ")"


def check_rank(backbone: DiffusersDenoiser, config: LoRAConfig) -> None:
    """The rank is at most the width of the narrowest adapted layer (a larger rank adds only parameters:
    rank 100000 wrote 1.7 GB per expert)."""
    pattern = re.compile(target_regex(backbone, config))
    widths = [min(m.in_features, m.out_features) for model in backbone.transformers()
              for name, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(name)]
    if widths and config.rank > min(widths):
        raise ValueError(f"--lora-rank {config.rank} exceeds the width of the adapted layers of "
                         f"{backbone.model_class} (the narrowest is {min(widths)}); use a rank <= {min(widths)}")


def peft_config(backbone: DiffusersDenoiser, config: LoRAConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=target_regex(backbone, config), init_lora_weights=True)


_LORA_KEY = re.compile(r"\.lora_([AB])\.([^.]+)\.")


class LoRAExperts:
    """Expert adapters ``expert_1 .. expert_K`` (and a ``fake_score`` adapter) on the frozen base of ``backbone``.

    Adapters can be added later (:meth:`build_experts`, :meth:`build_critic`: the factories the
    trainer calls); every one starts with LoRA B = 0, i.e. equal to the teacher.
    """

    def __init__(self, backbone: DiffusersDenoiser, num_experts: int = 0, config: LoRAConfig | None = None, *,
                 fake_score: bool = False, seed: int = 0):
        if not isinstance(num_experts, int) or num_experts < 0:
            raise ValueError(f"num_experts must be a non-negative integer, got {num_experts!r}")
        self.backbone = backbone
        self.config = config or LoRAConfig()
        check_rank(backbone, self.config)
        self.seed = seed
        self.names: list[str] = []
        self._params: dict[str, dict[str, nn.Parameter]] = {}
        self._views: dict[str, AdapterView] = {}
        self._active: str | None = "?"
        backbone.requires_grad_(False)  # the base stays frozen; only adapters are trained
        self.activate(None)
        self.teacher = BaseView(self)
        self.build_experts(num_experts)
        if fake_score:
            self.add(FAKE_SCORE)

    @property
    def experts(self) -> list["AdapterView"]:
        return [self._views[n] for n in self.names if n != FAKE_SCORE]

    @property
    def fake_score(self) -> "AdapterView | None":
        return self._views.get(FAKE_SCORE)

    def add(self, name: str) -> "AdapterView":
        """Add adapter ``name`` to every transformer of the backbone (seeded init, B = 0) and return its view."""
        if name in self._params:
            raise ValueError(f"adapter {name!r} exists already")
        flags = self._flags()
        previous = self._active
        with self._seeded(name), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # several adapters is the point
            for _, model in self._models():
                model.add_adapter(peft_config(self.backbone, self.config), adapter_name=name)
        self.names.append(name)
        self._params[name] = self._collect(name)
        for p, f in flags:  # add_adapter activates the new adapter and flips the others' flags
            p.requires_grad_(f)
        for p in self._params[name].values():
            p.data = p.data.float()  # adapters train in float32 even on a bfloat16 base (peft casts around them)
            p.requires_grad_(True)
        self._active = name
        self.activate(previous if previous != "?" else None)
        self._views[name] = AdapterView(self, name)
        return self._views[name]

    def build_experts(self, num_experts: int) -> list["AdapterView"]:
        """The views of ``expert_1 .. expert_K``, adding the missing adapters (the trainer's expert factory)."""
        for k in range(1, num_experts + 1):
            if f"expert_{k}" not in self._params:
                self.add(f"expert_{k}")
        return [self._views[f"expert_{k}"] for k in range(1, num_experts + 1)]

    def build_critic(self, phase: int = 0) -> "AdapterView":
        """The fake score of a phase: the ``fake_score`` adapter, re-initialised (equal to the teacher again)."""
        if FAKE_SCORE not in self._params:
            return self.add(FAKE_SCORE)
        self.reset(FAKE_SCORE)
        self._views[FAKE_SCORE] = AdapterView(self, FAKE_SCORE)  # a new module (same tensors) per phase
        return self._views[FAKE_SCORE]

    def _flags(self) -> list[tuple[nn.Parameter, bool]]:
        return [(p, p.requires_grad) for params in self._params.values() for p in params.values()]

    # Adapters ------------------------------------------------------------------------------
    def _collect(self, name: str) -> dict[str, nn.Parameter]:
        """``{"<model>.<module>.lora_A.weight": parameter}`` of one adapter (adapter name removed)."""
        out = {}
        for attr, model in self._models():
            for key, p in model.named_parameters():
                m = _LORA_KEY.search(key)
                if m and m.group(2) == name:
                    plain = _LORA_KEY.sub(r".lora_\1.", key)  # adapter name removed, as diffusers saves it
                    out[f"{attr}.{plain}"] = p
        if not out:
            raise ValueError(f"LoRA target modules matched no layer of {self.backbone.model_class}: "
                             f"{target_regex(self.backbone, self.config)}")
        return out

    def _models(self) -> list[tuple[str, nn.Module]]:
        return [(a, getattr(self.backbone, a)) for a in ("transformer", "transformer_2")
                if getattr(self.backbone, a) is not None]

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return self._params[name]

    def num_adapter_parameters(self, name: str) -> int:
        return sum(p.numel() for p in self._params[name].values())

    @contextmanager
    def _seeded(self, name: str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + zlib.crc32(name.encode()) % 100_000)
            yield

    def activate(self, name: str | None) -> None:
        """Route the base through adapter ``name`` (None: no adapter, the teacher).

        peft's ``set_adapter`` / ``disable_adapters`` also flip ``requires_grad`` of the adapters;
        the flags are restored so that freezing stays the trainer's decision.
        """
        if name == self._active:
            return
        flags = self._flags()
        for _, model in self._models():
            if not getattr(model, "_hf_peft_config_loaded", False):
                continue  # no adapter yet: the base is the teacher
            if name is None:
                model.disable_adapters()
            else:
                if self._active is None or self._active == "?":
                    model.enable_adapters()
                model.set_adapter(name)
        for p, f in flags:
            p.requires_grad_(f)
        self._active = name

    def reset(self, name: str) -> None:
        """Re-initialise adapter ``name`` in place (LoRA B = 0: the view equals the teacher again)."""
        from peft.tuners.lora import LoraLayer

        with self._seeded(name), torch.no_grad():
            for _, model in self._models():
                for module in model.modules():
                    if isinstance(module, LoraLayer) and name in module.lora_A:
                        module.reset_lora_parameters(name, True)

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self._params[name].items()}

    @torch.no_grad()
    def load_state_dict(self, name: str, state: dict[str, torch.Tensor], where: str = "") -> None:
        own = self._params[name]
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ValueError(f"LoRA weights{' in ' + where if where else ''} do not fit adapter {name!r}: "
                             f"{len(missing)} missing, {len(unexpected)} unexpected "
                             f"(e.g. {sorted(missing or unexpected)[0]})")
        for k, p in own.items():
            if p.shape != state[k].shape:
                raise ValueError(f"LoRA weight {k} has shape {tuple(state[k].shape)}, the adapter "
                                 f"{tuple(p.shape)} (rank differs?)")
            p.copy_(state[k])

    # Files in diffusers' LoRA format ---------------------------------------------------------
    def lora_metadata(self) -> dict:
        cfg = peft_config(self.backbone, self.config).to_dict()
        cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
        return json.loads(json.dumps(cfg, default=str))

    def save_adapter(self, name: str, folder, file_stem: str | None = None) -> list[Path]:
        """Write adapter ``name`` as ``<stem>.safetensors`` (and ``<stem>_transformer_2.safetensors`` for Wan2.2).

        Keys are ``transformer.<module>.lora_{A,B}.weight`` with the ``LoraConfig`` in the metadata,
        the layout of diffusers' ``save_lora_weights``; each file is written atomically.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = file_stem or name
        written = []
        meta = {f"transformer.{k}": v for k, v in self.lora_metadata().items()}
        for attr, _ in self._models():
            tensors = {"transformer." + k[len(attr) + 1:]: p.detach().contiguous().cpu()
                       for k, p in self._params[name].items() if k.startswith(attr + ".")}
            path = folder / (f"{stem}.safetensors" if attr == "transformer" else f"{stem}_{attr}.safetensors")
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(tensors, str(tmp), metadata={"format": "pt", LORA_METADATA_KEY: json.dumps(meta, sort_keys=True)})
            os.replace(tmp, path)
            written.append(path)
        return written

    def load_adapter(self, name: str, folder, file_stem: str | None = None) -> None:
        """Inverse of :meth:`save_adapter`."""
        folder = Path(folder)
        stem = file_stem or name
        state = {}
        for attr, _ in self._models():
            path = folder / (f"{stem}.safetensors" if attr == "transformer" else f"{stem}_{attr}.safetensors")
            if not path.is_file():
                raise ValueError(f"{str(folder)!r} has no {path.name}")
            try:
                with safe_open(str(path), framework="pt") as f:
                    for k in f.keys():
                        state[f"{attr}.{k.removeprefix('transformer.')}"] = f.get_tensor(k)
            except Exception as e:  # safetensors raises several types on a corrupt file
                raise ValueError(f"corrupt LoRA file {path}: {e}") from None
        self.load_state_dict(name, state, str(folder))


class AdapterView(nn.Module):
    """One adapter of a shared base, behind the Denoiser interface; its parameters are that adapter's only.

    The base is held as a plain attribute (not a submodule), so ``parameters()``, ``state_dict()``,
    ``requires_grad_`` and DDP see only the LoRA tensors. Move the backbone itself between devices.
    """

    def __init__(self, owner: LoRAExperts, name: str | None):
        super().__init__()
        object.__setattr__(self, "_owner", owner)
        self.adapter_name = name
        params = owner.adapter_parameters(name) if name is not None else {}
        self.lora = nn.ParameterDict({k.replace(".", "-"): p for k, p in params.items()})
        probe = owner.backbone.prompts.prompt_embeds
        self.register_buffer("_device_probe", torch.zeros((), device=probe.device), persistent=False)

    @property
    def owner(self) -> LoRAExperts:
        return self._owner

    @property
    def backbone(self) -> DiffusersDenoiser:
        return self._owner.backbone

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def config(self):
        return self.backbone.config

    @property
    def shape(self) -> tuple[int, ...]:
        return self.backbone.shape

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        self._owner.activate(self.adapter_name)
        return self.backbone(x, t, class_labels)

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)`` and friends move the shared base too (idempotent for the other views)."""
        self.backbone._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def combine_cfg(self, v_uncond, v_cond, scale):
        return self.backbone.combine_cfg(v_uncond, v_cond, scale)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.lora.values())
        return f"adapter={self.adapter_name!r}, lora_parameters={n}, base={self.backbone.model_class}"


class BaseView(AdapterView):
    """The base with every adapter disabled: the teacher, and the starting net of the trainer's factories.

    The trainer builds experts and critics from its starting net; here they are adapters on this
    same base (:meth:`build_experts`, :meth:`build_critic`), and the student a
    :class:`~pdmd_lab.backbones.students.LoRAStudent` (:attr:`student_class`).
    """

    def __init__(self, owner: LoRAExperts):
        super().__init__(owner, None)

    def build_experts(self, num_experts: int) -> list[AdapterView]:
        return self._owner.build_experts(num_experts)

    def build_critic(self, phase: int = 0) -> AdapterView:
        return self._owner.build_critic(phase)

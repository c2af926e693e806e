"""The configuration of a distillation run: shared training fields plus the method's own options."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from pdmd_lab.distill.methods import Method, get_method

DEFAULT_METHOD = "phased-dmd"


@dataclass
class DistillConfig:
    """Everything a distillation run needs, method options included (``options``, checked by the method)."""

    teacher: str = "oracle:ring-mix"  # oracle:<dataset>, a teacher folder, or another registered spec
    method: str = DEFAULT_METHOD
    steps: int = 4
    shift: float = 1.0  # time shift of the student's step times
    options: dict = field(default_factory=dict)  # the method's own options (see `pdmd-lab distill --help`)
    cfg: float = 3.0  # CFG scale of the real score, standard form (1 = none)
    iters: int = 1000  # generator updates in total (split equally over the phases; must divide)
    batch_size: int = 256  # global batch (split over processes)
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4  # learning rate of the critic
    fake_updates_per_generator_update: int = 5  # critic updates per generator update
    grad_clip: float = 10.0
    # AdamW's fused kernel: a step ~4x faster on a CPU, weights equal to the default multi-tensor step's only
    # to float rounding; off by default: the shipped models were trained without it
    fused_optimizer: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    init_iters: int = 2000  # oracle teachers: iterations fitting the net experts and critics start from
    net: dict = field(default_factory=dict)  # oracle teachers: network config (default: the dataset's MLP)

    def __post_init__(self):
        from pdmd_lab import safety

        safety.check_field_types(self)  # e.g. iters="abc" from a recipe override
        for name in ("options", "net"):  # every float finite: --dp-lambda inf, --noise-gain nan, --lora-alpha inf
            safety.check_finite_tree(getattr(self, name), "")
        for name in ("cfg", "shift", "lr_generator", "lr_fake", "grad_clip"):
            safety.check_number(name, float(getattr(self, name)))
        for name in ("lr_generator", "lr_fake", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.init_iters < 1:
            raise ValueError(f"init_iters must be >= 1, got {self.init_iters}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        for name in ("iters", "batch_size", "fake_updates_per_generator_update", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        m = self.build_method()
        if self.iters % m.num_phases:
            raise ValueError(f"iters={self.iters} must be a multiple of the number of phases ({m.num_phases})")

    @classmethod
    def from_flat(cls, **kwargs) -> "DistillConfig":
        """Build from one flat dict (recipes, the CLI): keys that are not shared fields are method options."""
        shared = {f.name for f in dataclasses.fields(cls)}
        options = dict(kwargs.pop("options", {}) or {})
        options.update({k: kwargs.pop(k) for k in list(kwargs) if k not in shared})
        return cls(**kwargs, options=options)

    def build_method(self) -> Method:
        return get_method(self.method).from_options(self.steps, self.shift, self.options)

    def flat(self) -> dict:
        """The inverse of :meth:`from_flat`."""
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "options"}, **d["options"]}

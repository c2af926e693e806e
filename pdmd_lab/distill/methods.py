"""Distillation methods as plug-ins (``docs/methods.md``): one registry, one trainer.

Every method here is a two-player game between a **generator** (the student's experts) and a
**critic** (DMD's fake score, D-MMD's auxiliary model), updated in turn by
:class:`~pdmd_lab.distill.trainer.Distiller`. A :class:`Method` owns everything that differs
between methods; the trainer knows none of them by name:

* ``Options``: a dataclass of the method's own options (validated in ``__post_init__``);
* ``num_phases``, ``step_times()``, ``boundaries()``: the student's experts and their subintervals;
* ``sampler``: the name of the student's sampler in :data:`pdmd_lab.sampling.SAMPLERS`;
* ``teacher_kind``: the kind of teacher it distils (``"continuous"`` flow matching or ``"discrete"``);
* ``build_experts(init_net)``, ``build_critic(init_net, phase)``: the nets, from the starting net;
* ``critic_loss(run, draw)``, ``generator_loss(run, draw)``: scalar loss and a dict of logs.

``run`` is the :class:`~pdmd_lab.distill.trainer.Distiller`: it exposes ``teacher``, ``real_score``
(the teacher with CFG), ``critic`` and ``generator`` (the trained nets, through their prepared
data-parallel wrappers), ``experts`` (the student's experts, the trained one as its wrapper),
``critic_module`` (the critic unwrapped, for calls that must not sync gradients), ``phase``,
``prior`` and ``device``. ``draw`` is a :class:`Draw`: all randomness of one update, drawn for the
global batch and sliced to this process, so results do not depend on the number of processes.

Add a method from anywhere with :func:`register_method`::

    @register_method
    class MyMethod(DMDFamily):
        name = "my-method"
        ...

and it appears in ``pdmd-lab distill --method`` (with its options as flags), the recipes, the app
and the notebooks.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from pdmd_lab import flow
from pdmd_lab.distill import losses, rollouts

METHODS: dict[str, type["Method"]] = {}


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: add a :class:`Method` subclass to :data:`METHODS` under ``cls.name``."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"method class {cls.__name__} needs a non-empty `name`")
    if not (dataclasses.is_dataclass(cls.Options)):
        raise ValueError(f"{cls.__name__}.Options must be a dataclass")
    old = METHODS.get(cls.name)
    same = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
    if old is not None and not same and not cls.__dict__.get("replaces", False):
        raise ValueError(f"method name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}; set "
                         f"`replaces = True` on {cls.__qualname__} to replace it, or choose another name")
    METHODS[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import the modules that register methods: the kit's optional parts, the modules named in
    ``$PDMD_PLUGINS`` (comma-separated) and the ``pdmd_lab.plugins`` entry points of installed packages."""
    import importlib
    from importlib.metadata import entry_points

    from pdmd_lab import safety

    names = ["pdmd_lab.discrete", "pdmd_lab.backbones"]
    names += safety.env_plugins()  # $PDMD_PLUGINS, checked
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name.startswith("pdmd_lab.") and e.name == name:
                continue  # an optional part not present
            if not name.startswith("pdmd_lab."):
                raise ValueError(f"cannot import plugin module {name!r} named in PDMD_PLUGINS: {e}") from None
            raise
        except Exception as e:  # a plugin that fails while importing: one line naming it
            if name.startswith("pdmd_lab."):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"plugin module {name!r} named in PDMD_PLUGINS failed to import: "
                             f"{type(e).__name__}: {first}") from None
    if not _ENTRY_POINTS_LOADED:  # scanning installed packages' metadata costs ~50 ms: once per process
        for ep in entry_points(group="pdmd_lab.plugins"):
            ep.load()
        _ENTRY_POINTS_LOADED.append(True)


_ENTRY_POINTS_LOADED: list = []


def get_method(name: str) -> type["Method"]:
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


# Randomness of one update ---------------------------------------------------------------------

class Draw:
    """All random numbers of one update, from one generator seeded by ``(seed, iteration, stream)``.

    Per-sample draws are made for the **global** batch and sliced to this process's rows, so that
    ``n`` processes x batch ``B / n`` draw exactly what one process x batch ``B`` draws.
    """

    def __init__(self, generator: torch.Generator, batch: int, rank: int = 0, world: int = 1, device="cpu"):
        if batch % world:
            raise ValueError(f"batch_size={batch} must be divisible by the number of processes ({world})")
        self.generator, self.batch, self.rank, self.world, self.device = generator, batch, rank, world, device
        self.local = batch // world

    def _slice(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.rank * self.local:(self.rank + 1) * self.local].to(self.device)

    def randn(self, *shape) -> torch.Tensor:
        """``(local batch, *shape)`` standard normal."""
        return self._slice(torch.randn((self.batch, *shape), generator=self.generator))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(*x.shape[1:]).to(x.dtype)

    def rand(self, dtype=torch.float32) -> torch.Tensor:
        """``(local batch,)`` uniform on ``[0, 1)``."""
        return self._slice(torch.rand(self.batch, generator=self.generator, dtype=dtype))

    def randint_batch(self, high: int) -> torch.Tensor:
        """``(local batch,)`` integers in ``[0, high)`` (class labels)."""
        return self._slice(torch.randint(0, high, (self.batch,), generator=self.generator))

    def randint(self, lo: int, hi: int) -> int:
        """One integer in ``[lo, hi]``, the same on every process (e.g. an SGTS exit step)."""
        return int(torch.randint(lo, hi + 1, (1,), generator=self.generator))

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        """One float in ``[lo, hi)``, the same on every process (e.g. a time shared by the whole batch, or a
        coin flip deciding which loss this update uses)."""
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def t_between(self, lo: float, hi: float, shift: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        """``(local batch,)`` times strictly inside ``(lo, hi]``: ``u ~ U(0, 1)`` (float64) through
        :func:`pdmd_lab.flow.t_from_uniform` (time-shifted within the range, kept off ``t = lo``)."""
        flow.t_from_uniform(torch.zeros(0, dtype=torch.float64), lo, hi, shift)  # checks the range before drawing
        return flow.t_from_uniform(self.rand(torch.float64), lo, hi, shift).to(dtype)


@contextmanager
def frozen(*modules):
    """Temporarily turn off ``requires_grad`` of every parameter of ``modules``."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


# The base class ---------------------------------------------------------------------------------

@dataclass
class MethodOptions:
    """Options of a method with none of its own."""


class Method(abc.ABC):
    """A distillation method (see the module docstring for the contract): subclasses must give the two losses."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = MethodOptions
    teacher_kind: ClassVar[str] = "continuous"
    sampler: ClassVar[str] = "euler"
    summary: ClassVar[str] = ""  # one line for --help and the app
    replaces: ClassVar[bool] = False  # set on a class whose name is already registered, to take it over
    revisits_phases: ClassVar[bool] = False  # True: phase_at returns to earlier phases (each keeps its critic)

    def __init__(self, steps: int, shift: float = 1.0, options=None):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.steps, self.shift = steps, shift
        self.options = self.Options() if options is None else options
        self.validate()

    @classmethod
    def from_options(cls, steps: int, shift: float = 1.0, options: dict | None = None) -> "Method":
        """Build from a dict of options; a key the method does not have is an error, not ignored."""
        options = dict(options or {})
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - fields)
        if unknown:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"option {unknown[0]!r} does not apply to method {cls.name!r} (its options: {allowed})")
        return cls(steps, shift, cls.Options(**options))

    def validate(self) -> None:
        """Check steps and options together; raise ValueError naming the option."""

    @property
    def num_phases(self) -> int:
        return 1

    def step_times(self) -> list[float]:
        return [float(t) for t in flow.step_times(self.steps, self.shift)]

    def boundaries(self) -> list[float]:
        return [float(b) for b in flow.phase_boundaries(self.steps, self.num_phases, self.shift)]

    def phase_at(self, it: int, iters: int) -> int:
        """The schedule: the phase (0-based) whose expert iteration ``it`` (0-based) of ``iters`` trains.

        Progressive by default (Phased DMD Alg. 1): the k-th block of ``iters / num_phases`` iterations
        trains phase k. A method whose schedule returns to earlier phases sets ``revisits_phases``.
        """
        return it // (iters // self.num_phases)

    def build_experts(self, init_net: nn.Module) -> list[nn.Module]:
        """One expert per phase, each a copy of the starting net, unless the starting net builds its own
        (``init_net.build_experts(K)``: LoRA adapters on one frozen base, :mod:`pdmd_lab.backbones.lora`)."""
        if hasattr(init_net, "build_experts"):
            return init_net.build_experts(self.num_phases)
        return [copy.deepcopy(init_net) for _ in range(self.num_phases)]

    def build_critic(self, init_net: nn.Module, phase: int) -> nn.Module:
        """The critic of ``phase`` (0-based), a fresh copy of the starting net (or ``init_net.build_critic(phase)``)."""
        if hasattr(init_net, "build_critic"):
            return init_net.build_critic(phase)
        return copy.deepcopy(init_net)

    @abc.abstractmethod
    def critic_loss(self, run, draw: Draw) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one critic update and a dict of logs."""

    @abc.abstractmethod
    def generator_loss(self, run, draw: Draw) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one generator update and a dict of logs."""

    def student_meta(self) -> dict:
        return {"method": self.name, "options": dataclasses.asdict(self.options)}


# The DMD family -------------------------------------------------------------------------------------

@dataclass
class DMDOptions:
    # "dmd2" (x0 space, normalised: the reference code of DMD, DMD2, DP-DMD and LightX2V) or "paper"
    # (velocity space, Phased DMD Eq. 9/10)
    weighting: str = "dmd2"
    t_min: float = 0.02  # t range of the DMD gradient and the fake-score loss
    t_max: float = 0.98
    t_shift: float = 1.0  # time shift of the drawn t, applied within the range

    def __post_init__(self):
        if self.weighting not in losses.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {losses.WEIGHTINGS}, got {self.weighting!r}")
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"t range ({self.t_min}, {self.t_max}) must satisfy 0 < t_min < t_max <= 1")
        if self.t_shift <= 0:
            raise ValueError(f"t_shift must be > 0, got {self.t_shift}")


class DMDFamily(Method):
    """Shared game of the DMD methods: a fake score trained on the student's outputs, and the DMD
    gradient ``g`` pushed into the generator through :func:`losses.surrogate_loss`.

    A subclass gives :meth:`rollout` (how noise becomes the output the DMD loss judges) and, if its
    ``t`` range differs, :meth:`t_range`; :meth:`extra_generator_loss` adds a term (DP-DMD's anchor).
    """

    Options = DMDOptions

    @abc.abstractmethod
    def rollout(self, run, z, labels, draw: Draw, *, grad: bool) -> rollouts.Rollout:
        """How noise becomes the output the DMD loss judges."""

    def t_range(self, s: float, phase: int) -> tuple[float, float]:
        """Range of the ``t`` drawn for an output at level ``s``."""
        return self.options.t_min, self.options.t_max

    def draw_t(self, s: float, phase: int, draw: Draw) -> torch.Tensor:
        lo, hi = self.t_range(s, phase)
        return draw.t_between(lo, hi, self.options.t_shift)

    def critic_loss(self, run, draw):
        """Fake-score loss on fresh student samples (flow matching, or the Eq. 11 target for s > 0)."""
        z, labels = run.prior(draw)
        r = self.rollout(run, z, labels, draw, grad=False)
        t = self.draw_t(r.s, run.phase, draw).to(run.device)
        eps = draw.randn_like(r.x)
        loss = losses.fake_score_loss(run.critic, r.x, r.s, t, eps, labels).mean()
        return loss, {"loss_fake": loss.item()}

    def generator_loss(self, run, draw):
        """DMD gradient at the rollout's output, through the surrogate (mean over dims and batch)."""
        z, labels = run.prior(draw)
        r = self.rollout(run, z, labels, draw, grad=True)
        t = self.draw_t(r.s, run.phase, draw).to(run.device)
        eps = draw.randn_like(r.x)
        fake = run.critic_module
        with frozen(fake):
            grad, logs = losses.dmd_gradient(r.x, r.s, t, eps, run.real_score, fake, labels,
                                             self.options.weighting)
        loss = losses.surrogate_loss(r.x, grad).mean()
        logs["loss_dmd"] = loss.item()
        extra, extra_logs = self.extra_generator_loss(run, z, labels, r)
        logs.update(extra_logs)
        if extra is not None:
            loss = loss + extra
        return loss, logs

    def extra_generator_loss(self, run, z, labels, r) -> tuple[torch.Tensor | None, dict]:
        return None, {}


@register_method
class DMD(DMDFamily):
    """One-step DMD: ``x0 = z - v_G(z, 1)`` with the DMD gradient (Yin et al. 2024)."""

    name = "dmd"
    summary = "one-step DMD"

    def validate(self):
        if self.steps != 1:
            raise ValueError(f"method dmd is one-step: steps must be 1, got {self.steps}")

    def rollout(self, run, z, labels, draw, *, grad):
        return rollouts.one_step(run.generator, z, labels, grad=grad)


@register_method
class DMD2SGTS(DMDFamily):
    """DMD2 multi-step with stochastic gradient truncation: one shared net, a random exit step."""

    name = "dmd2-sgts"
    sampler = "renoise"
    summary = "DMD2 multi-step, stochastic gradient truncation"

    def rollout(self, run, z, labels, draw, *, grad):
        return rollouts.sgts(run.generator, z, labels, self.step_times(), draw, grad=grad)


@dataclass
class PhasedOptions(DMDOptions):
    phases: int = 4  # K experts, one per SNR subinterval; must divide steps
    weighting: str = "paper"  # the Phased DMD paper's Eq. 9/10; "dmd2" is selectable
    t_max: float = 1.0  # phase k draws t ~ U(t_k, t_max) (nested)


@register_method
class PhasedDMD(DMDFamily):
    """Phased DMD (Fan et al. 2025): K experts trained progressively, one per SNR subinterval, with a
    fresh fake score per phase trained on the unbiased subinterval target (Eq. 11)."""

    name = "phased-dmd"
    Options = PhasedOptions
    summary = "Phased DMD: one expert per SNR subinterval, nested t ranges"

    def validate(self):
        flow.phase_boundaries(self.steps, self.options.phases)  # raises on a bad phase count

    @property
    def num_phases(self) -> int:
        return self.options.phases

    def rollout(self, run, z, labels, draw, *, grad):
        return rollouts.phased(run.experts, run.phase, z, labels, self.step_times(), self.boundaries(), draw,
                               grad=grad)

    def t_range(self, s, phase):
        """Phase k: ``t ~ U(t_k, t_max)``, nested (Phased DMD §3.3); ``t_min`` still bounds it below."""
        return max(s, self.options.t_min), self.options.t_max


@dataclass
class DPDMDOptions(DMDOptions):
    dp_lambda: float = 0.05  # weight of the first-step anchor (DP-DMD); both losses are means over dims
    dp_t_anchor: float | None = None  # None: the end of the student's first step, t_1
    dp_anchor_steps: int = 8  # Euler steps of the teacher's anchor run

    def __post_init__(self):
        super().__post_init__()
        if self.dp_lambda < 0:
            raise ValueError(f"dp_lambda must be >= 0, got {self.dp_lambda}")
        if self.dp_t_anchor is not None and not 0 <= self.dp_t_anchor < 1:
            raise ValueError(f"dp_t_anchor must be in [0, 1), got {self.dp_t_anchor}")
        if self.dp_anchor_steps < 1:
            raise ValueError(f"dp_anchor_steps must be >= 1, got {self.dp_anchor_steps}")


@register_method
class DPDMD(DMDFamily):
    """DP-DMD: step 1 anchored to the teacher's ODE (keeps diversity), DMD on the later steps."""

    name = "dp-dmd"
    Options = DPDMDOptions
    summary = "DP-DMD: first step anchored to the teacher, DMD on the rest"

    def validate(self):
        if self.steps < 2:
            raise ValueError("method dp-dmd needs steps >= 2 (its first step is anchored, the rest get DMD)")

    def rollout(self, run, z, labels, draw, *, grad):
        return rollouts.dp_dmd(run.generator, z, labels, self.step_times(), grad=grad)

    def extra_generator_loss(self, run, z, labels, r):
        o = self.options
        t_anchor = self.step_times()[1] if o.dp_t_anchor is None else o.dp_t_anchor
        with torch.no_grad():
            ts = torch.linspace(1.0, t_anchor, o.dp_anchor_steps + 1, dtype=torch.float64)
            from pdmd_lab.sampling import sample_euler

            z_anchor = sample_euler(run.teacher, z, ts, class_labels=labels, cfg=run.cfg)
            anchor = (z - z_anchor) / (1 - t_anchor)
        loss_anchor = losses.dp_dmd_anchor_loss(r.v_first, anchor).mean()
        return o.dp_lambda * loss_anchor, {"loss_anchor": loss_anchor.item()}


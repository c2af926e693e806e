"""D-MMD as a method of the distillation engine (``docs/methods.md``), and what the engine needs for discrete teachers.

* :class:`DMMD` (``d-mmd``): the critic is the auxiliary model, the generator the student's one expert
  (the teacher plus a zero-initialised noise input), the losses :mod:`pdmd_lab.discrete.dmmd`; the
  student samples with the masked ancestral sampler (``sampler = "masked"``).
* :class:`DataPrior`: the batch of each update is **data** tokens and labels (``z_t`` comes from data).
* :func:`masked_setup`: the teacher loader for masked-diffusion specs (``oracle:ring-mix-tokens``, a
  masked-teacher folder, or ``masked:<either>``): teacher, starting net, prior.
* :class:`MaskedTeacherSampler`: a masked teacher with its step count and CFG, the interface of students.

Importing :mod:`pdmd_lab.discrete` registers all of it (method, sampler, teacher loader, folder kind,
network types).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pdmd_lab import io
from pdmd_lab import nets as cont_nets
from pdmd_lab.data import get_dataset
from pdmd_lab.discrete import dmmd
from pdmd_lab.discrete.masking import guided_logits, masked_initial, sample_masked, step_times
from pdmd_lab.discrete.nets import (
    NET_CONFIGS,
    NETS,
    add_noise_input,
    build_net,
    default_net_config,
    net_config_from_dict,
)
from pdmd_lab.discrete.oracle import TokenOracle
from pdmd_lab.discrete.teacher import KIND, fit_net_to_oracle, is_masked_teacher_spec, load_masked_teacher
from pdmd_lab.distill.methods import Method, get_method, register_method
from pdmd_lab.distill.trainer import cache_dir, register_teacher_loader
from pdmd_lab.sampling import register_sampler
from pdmd_lab.student import TeacherSampler

SAMPLER = "masked"


# The method ----------------------------------------------------------------------------------------

@dataclass
class DMMDOptions:
    target: str = "soft"  # auxiliary target: "soft" (y = sg(p), same eps) or "hard" (y = onehot(x))
    noise_dim: int = 8  # generator noise input: dims (token MLP) or channels (token UNet); 0 = no-noise ablation
    noise_gain: float = 100.0  # the zero-initialised noise layer reads noise_gain * eps (ours; see add_noise_input)

    def __post_init__(self):
        if self.target not in dmmd.TARGETS:
            raise ValueError(f"target must be one of {dmmd.TARGETS}, got {self.target!r}")
        if self.noise_dim < 0:
            raise ValueError(f"noise_dim must be >= 0, got {self.noise_dim}")
        if self.noise_gain <= 0:
            raise ValueError(f"noise_gain must be > 0, got {self.noise_gain}")


@register_method
class DMMD(Method):
    """D-MMD (Hoogeboom et al. 2026, arXiv 2603.20155; ``docs/conventions.md`` §3): moment matching distillation of a
    masked-diffusion teacher into a ``k``-step generator with a Gaussian noise input.

    Critic step = auxiliary step (``L_aux``), generator step = ``L_gen``; each draws its own batch of
    data, ``s, t``, ``eps`` and tokens. D-MMD alternates them one to one: run it with
    ``fake_updates_per_generator_update = 1`` (``--fake-updates 1``).
    """

    name = "d-mmd"
    Options = DMMDOptions
    teacher_kind = "discrete"
    sampler = SAMPLER
    summary = "D-MMD: masked-diffusion moment matching, generator with a noise input (discrete teachers)"

    def validate(self):
        if self.shift != 1.0:
            raise ValueError(f"shift does not apply to d-mmd (its grid is t_j = j / k), got shift={self.shift}")

    def step_times(self) -> list[float]:
        return step_times(self.steps).tolist()

    def boundaries(self) -> list[float]:
        return [1.0, 0.0]

    def build_experts(self, init_net):
        """The generator: the starting net plus a zero-initialised noise input (equal to it at the start)."""
        return [add_noise_input(init_net, self.options.noise_dim, self.options.noise_gain)]

    def build_critic(self, init_net, phase):
        """The auxiliary ``x_phi``, a copy of the starting net (no noise input)."""
        return copy.deepcopy(init_net)

    def critic_loss(self, run, draw):
        x0, labels = run.prior(draw)
        generator = run.accelerator.unwrap_model(run.generator)
        loss, logs = dmmd.auxiliary_loss(generator, run.critic, run.teacher, x0, labels, steps=self.steps,
                                         cfg=run.cfg, target=self.options.target, rng=dmmd.DrawSource(draw))
        loss = loss.mean()
        return loss, {"loss_critic": loss.item()}

    def generator_loss(self, run, draw):
        x0, labels = run.prior(draw)
        loss, logs = dmmd.generator_loss(run.generator, run.critic_module, run.teacher, x0, labels,
                                         steps=self.steps, cfg=run.cfg, rng=dmmd.DrawSource(draw))
        return loss.mean(), logs


# The prior: data ---------------------------------------------------------------------------------

class DataPrior:
    """Data tokens and their labels for each update (D-MMD noises **data** to ``z_t``).

    The global batch is drawn from the update's generator and sliced to this process's rows.
    """

    def __init__(self, dataset):
        if dataset.kind != "tokens":
            raise ValueError(f"DataPrior needs a token dataset, got {dataset.name!r} ({dataset.kind})")
        self.dataset = dataset
        self.shape, self.num_classes = dataset.shape, dataset.num_classes

    def __call__(self, draw) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset.sample(draw.batch, seed=draw.generator)
        rows = slice(draw.rank * draw.local, (draw.rank + 1) * draw.local)
        return x[rows].to(draw.device), y[rows].to(draw.device)


# The teacher loader ------------------------------------------------------------------------------

_START_NETS: dict = {}  # (spec, net, iters, seed) -> net fitted to an oracle, also cached on disk


def oracle_start_net(spec: str, oracle: TokenOracle, net_cfg: dict, dataset, iters: int, seed: int):
    """The net an oracle's generator and auxiliary start from: fitted once (:func:`fit_net_to_oracle`),
    cached in the process and on disk (``masked-init-<hash>.safetensors`` in the engine's cache)."""
    key = json.dumps([spec, net_cfg, iters, seed], sort_keys=True)
    if key in _START_NETS:
        return _START_NETS[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(net_cfg)
    f = cache_dir() / f"masked-init-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    try:
        io.load_weights(net, io.read_tensors(f.parent, f.stem), str(f))
    except ValueError:  # none yet, or corrupt: fit
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            main = os.environ.get("RANK", "0") == "0"  # a bar on the main process: the fit takes minutes
            net = fit_net_to_oracle(oracle, net, dataset, iters=iters, seed=seed, progress=main)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            io.save_weights_file(f, net.state_dict())
        except OSError:
            pass  # a read-only cache only costs time
    _START_NETS[key] = net.eval()
    return net


def masked_setup(config, device, state):
    """Teacher loader of the engine for masked-diffusion specs: ``(teacher, init_net, prior, info)``.

    An oracle's starting net is a token MLP fitted to it (``config.net``, ``config.init_iters``); a
    teacher folder is its own starting net. A continuous method given a discrete teacher is refused here,
    before any fitting.
    """
    method = get_method(config.method)
    if method.teacher_kind != "discrete":
        raise ValueError(f"method {config.method!r} distils {method.teacher_kind} teachers; "
                         f"{config.teacher!r} is a discrete (masked-diffusion) teacher: use --method d-mmd")
    spec = config.teacher.removeprefix("masked:")
    teacher = load_masked_teacher(spec, device)
    ds = get_dataset(teacher.dataset)
    if isinstance(teacher, TokenOracle):
        net_cfg = net_config_from_dict(config.net) if config.net else default_net_config(ds)
        config.net = io.json_ready(net_cfg)
        if state is not None:  # resuming: the starting net is in the train state
            init = build_net(config.net)
            tensors = io.read_tensors(state, "state")
            io.load_weights(init, {k[5:]: v for k, v in tensors.items() if k.startswith("init.")}, str(state))
        else:
            init = oracle_start_net(spec, teacher, config.net, ds, config.init_iters, config.seed)
        save_init = True
    else:
        init, save_init = teacher, False
        config.net = io.json_ready(teacher.config)
    return teacher, init, DataPrior(ds), {"dataset": ds.name, "shape": ds.shape, "save_init": save_init}


# Sampling masked teachers like students ---------------------------------------------------------

class MaskedTeacherSampler(TeacherSampler):
    """A masked-diffusion teacher run with the ``k``-step ancestral sampler and CFG on logits."""

    sampler = SAMPLER

    def __init__(self, model, *, steps: int = 50, cfg: float = 1.0, dataset: str = "", shape=(), meta=None):
        super().__init__(model, steps=steps, cfg=cfg, dataset=dataset, shape=shape, meta=meta)
        self.step_times = step_times(steps)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def velocity(self, x, t, class_labels):  # the sampler registry's name for the network call: logits here
        return guided_logits(self.model, x, t, class_labels, self.cfg)

    def with_steps(self, steps: int, cfg: float | None = None) -> "MaskedTeacherSampler":
        return MaskedTeacherSampler(self.model, steps=steps, cfg=self.cfg if cfg is None else cfg,
                                    dataset=self.dataset, shape=self.shape, meta=self.meta)

    def describe(self) -> str:
        return f"masked teacher, {self.num_steps} step(s), CFG {self.cfg:g}"


def load_masked_sampler(spec: str, *, steps: int | None = None, cfg: float | None = None, name: str = ""):
    """``oracle:ring-mix-tokens`` or a masked-teacher folder as a :class:`MaskedTeacherSampler`
    (default: 50 steps, no guidance: masked-diffusion teachers here are compared at CFG 1)."""
    teacher = load_masked_teacher(spec)
    ds = get_dataset(teacher.dataset)
    return MaskedTeacherSampler(teacher, steps=steps or 50, cfg=1.0 if cfg is None else cfg, dataset=ds.name,
                                shape=ds.shape, meta={"name": name or str(spec)})


def _masked_teacher_from_folder(path, cfg, device):
    return load_masked_teacher(Path(path), device)


# Registration --------------------------------------------------------------------------------------

register_sampler(SAMPLER, sample_masked, initial=masked_initial)
register_teacher_loader("masked", masked_setup, claims=is_masked_teacher_spec)
io.register_kind(KIND, _masked_teacher_from_folder)
cont_nets.NET_CONFIGS.update(NET_CONFIGS)  # students save their experts' configs; loading rebuilds them
cont_nets.NETS.update(NETS)

"""One trainer for every distillation method (``docs/methods.md``): phases -> (critic steps, generator step).

:class:`Distiller` takes objects: a teacher and a starting net (Denoisers), a prior that draws the
batch of each update, a :class:`~pdmd_lab.distill.methods.Method` and a :class:`DistillConfig`. It
knows no method by name: the method says how many phases, which nets, and what the two losses are.
:func:`distill` is the one-call helper that loads a teacher from a spec, fits an oracle's starting
net (cached on disk), and builds the Distiller.

Updates alternate: ``critic_updates`` calls of :meth:`Distiller.critic_step`, then one of
:meth:`Distiller.generator_step` (DMD2's two-time-scale rule). Phases run in order: phase k trains
only expert k, the others are frozen, and each phase builds a fresh critic.

Data parallel (``accelerate launch`` on GPUs, ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N``
on CPU): ``batch_size`` is the global batch; every random number of iteration ``i`` is drawn for the
global batch from a generator seeded by ``(seed, i)`` and sliced to this process, every trained net
runs through its prepared (DDP) wrapper so gradients are averaged, and only the main process writes.
So N processes end with the same weights as one, and a resumed run with the same weights as an
uninterrupted one.

A run folder holds the student (``config.json``, ``expert_k.safetensors``), ``log.jsonl`` and
``train_state/`` (every weight and optimizer state, for ``resume``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from pdmd_lab import io
from pdmd_lab.distill.config import DistillConfig
from pdmd_lab.distill.methods import Draw, Method
from pdmd_lab.student import Student
from pdmd_lab.teacher import Guided, iteration_generator

_ORACLE_FITS: dict = {}  # in-process cache of starting nets fitted to oracle teachers (also cached on disk)


class GaussianPrior:
    """Noise ``z ~ N(0, I)`` of a shape and uniform class labels: what continuous students start from."""

    def __init__(self, shape: tuple[int, ...], num_classes: int):
        self.shape, self.num_classes = tuple(shape), num_classes

    def __call__(self, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        return draw.randn(*self.shape), draw.randint_batch(self.num_classes)


class Distiller:
    """Alternating training of a few-step student against a teacher, for any registered method.

    ``callback(info)`` runs every ``callback_every`` generator updates with
    ``info = {"iter", "phase", "student", "logs", "distiller"}``; a dict it returns is added to the log.
    """

    def __init__(self, teacher, init_net, prior, method: Method, config: DistillConfig, out=None, *,
                 dataset: str = "", shape: tuple[int, ...] = (), progress: bool = True,
                 callbacks: list[Callable] | None = None, callback_every: int = 100, command: str = "",
                 save_init: bool = False):
        from accelerate import Accelerator

        self.config, self.method, self.prior = config, method, prior
        self.out, self.progress, self.command = Path(out) if out else None, progress, command
        self.callbacks, self.callback_every = list(callbacks or []), callback_every
        self.accelerator = Accelerator()
        from accelerate.utils import DistributedType

        a = self.accelerator  # one process, no loss scaling, no accumulation: accelerate's wrappers would only
        # call torch's own zero_grad, backward, clip_grad_norm_ and step, after ~1.5 ms of checks an update
        self._plain = (a.distributed_type == DistributedType.NO and a.scaler is None
                       and a.gradient_accumulation_steps == 1)
        self._backward = torch.Tensor.backward if self._plain else a.backward
        self._clip = torch.nn.utils.clip_grad_norm_ if self._plain else a.clip_grad_norm_
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        Draw(torch.Generator(), config.batch_size, self.rank, self.world)  # checks the batch split
        self.teacher = teacher.to(self.device)
        self.cfg = config.cfg
        self.real_score = Guided(self.teacher, config.cfg)
        self.init_net, self.save_init = init_net.to(self.device), save_init

        # The student: one expert per phase, all from the starting net's weights.
        self.iters_per_phase = config.iters // method.num_phases
        self.total_iters = config.iters
        self.it, self.phase, self.wall = 0, 0, 0.0
        self._phases: dict[int, tuple] = {}  # phase -> (generator, critic, their optimizers), prepared
        state = self._read_train_state() if self.out is not None else None
        experts = method.build_experts(self.init_net)
        student_class = getattr(self.init_net, "student_class", Student)  # e.g. adapters-only LoRA students
        self.student = student_class(experts, method.boundaries(), method.step_times(), sampler=method.sampler,
                                     dataset=dataset, shape=shape,
                                     meta={**method.student_meta(), "teacher": config.teacher, "cfg": config.cfg}
                                     ).to(self.device)
        self._start_phase(0 if state is None else state["phase"])
        if state is not None:
            self._load_train_state(state)

    # Nets the method sees ------------------------------------------------------------------------
    @property
    def experts(self) -> list:
        """The student's experts, the one in training through its prepared wrapper."""
        return [self.generator if k == self.phase else e for k, e in enumerate(self.student.experts)]

    @property
    def critic_module(self):
        return self.accelerator.unwrap_model(self.critic)

    @property
    def fake_score(self):  # the critic's name in the DMD methods
        return self.critic

    # Phases and optimizers ---------------------------------------------------------------------
    def _start_phase(self, phase: int) -> None:
        """Train expert ``phase`` from now on: freeze the others, switch to its critic and optimizers.

        A phase's critic and optimizers are built the first time it is trained. A progressive schedule
        never returns to a phase, so its nets are dropped when the next one starts (a new critic per
        phase); a schedule that revisits phases (``method.revisits_phases``) keeps each phase's own.
        """
        self.phase = phase
        if phase not in self._phases:
            if not self.method.revisits_phases:
                self._phases.clear()
            self._phases[phase] = self._build_phase(phase)
        for k, e in enumerate(self.student.experts):
            e.requires_grad_(k == phase).train(k == phase)
        self.generator, self.critic, self.opt_generator, self.opt_critic = self._phases[phase]

    def _build_phase(self, phase: int) -> tuple:
        """Expert ``phase`` (trainable), a new critic and both optimizers, prepared for data parallel."""
        c = self.config
        generator = self.student.experts[phase].requires_grad_(True)
        critic = self.method.build_critic(self.init_net, phase).to(self.device).requires_grad_(True).train()
        betas = (0.0, 0.999)  # Phased DMD / DMD2 setting for both nets
        # foreach (torch's default on GPUs, not on CPUs): the same numbers as the per-tensor loop, bit for
        # bit, with about a fifth less optimizer time for the small nets trained on a CPU; fused: a single
        # kernel, ~4x faster again, equal to the loop only to float rounding (``config.fused_optimizer``)
        impl = {"fused": True} if c.fused_optimizer else {"foreach": True}
        trainable = [p for p in generator.parameters() if p.requires_grad]
        opt_generator = torch.optim.AdamW(trainable, lr=c.lr_generator, betas=betas, weight_decay=0.0, **impl)
        opt_critic = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=c.lr_fake,
                                       betas=betas, weight_decay=0.0, **impl)
        return tuple(self.accelerator.prepare(generator, critic, opt_generator, opt_critic))

    def _draw(self, it: int, stream: int) -> Draw:
        return Draw(iteration_generator(self.config.seed, it, stream), self.config.batch_size, self.rank,
                    self.world, self.device)

    # The two updates ------------------------------------------------------------------------------
    def critic_step(self, draw: Draw) -> dict:
        """One update of the critic (the fake score, or D-MMD's auxiliary)."""
        loss, logs = self.method.critic_loss(self, draw)
        self._update(loss, self.critic, self.opt_critic, "critic")
        return logs

    def generator_step(self, draw: Draw) -> dict:
        """One update of the expert in training."""
        loss, logs = self.method.generator_loss(self, draw)
        self._update(loss, self.generator, self.opt_generator, "generator")
        logs["loss_generator"] = loss.item()
        return logs

    fake_score_step = critic_step

    def _update(self, loss, net, opt, name: str) -> None:
        self._check(loss, name)
        opt = _raw(opt) if self._plain else opt
        opt.zero_grad(set_to_none=True)
        self._backward(loss)
        self._clip([p for p in net.parameters() if p.requires_grad], self.config.grad_clip)
        opt.step()

    def _checkpoint_note(self) -> str:
        """``; the last checkpoint (iteration N) in OUT is intact``, only when there is one."""
        st = read_train_state(self.out) if self.out is not None else None
        return f"; the last checkpoint (iteration {st['iter']}) in {self.out} is intact" if st else \
            "; no checkpoint was written"

    def _check(self, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            where = self._checkpoint_note() if self.out else ""
            name = "fake-score" if name == "critic" and self.method.teacher_kind == "continuous" else name
            raise RuntimeError(f"non-finite {name} loss at iteration {self.it} (phase {self.phase + 1}){where}")

    # The loop -------------------------------------------------------------------------------------
    def train(self) -> Student:
        """Run (or finish) training; returns the student."""
        c = self.config
        main = self.accelerator.is_main_process
        bar = tqdm(range(self.it, self.total_iters), initial=self.it, total=self.total_iters,
                   disable=not (self.progress and main), desc=f"{c.method} {self.student.dataset}")
        t0, wall0 = time.time(), self.wall
        for it in bar:
            phase = self.method.phase_at(it, self.config.iters)  # the method's schedule
            if phase != self.phase:
                self._start_phase(phase)
            self.it = it
            logs: dict = {}
            for f in range(c.fake_updates_per_generator_update):
                logs.update(self.critic_step(self._draw(it, 1 + f)))
            logs.update(self.generator_step(self._draw(it, 0)))
            self.it = done = it + 1
            self.wall = wall0 + time.time() - t0
            shown = {k: f"{v:.3g}" for k, v in logs.items() if k in ("loss_fake", "loss_critic", "loss_generator")}
            bar.set_postfix(phase=self.phase + 1, **shown)
            if self.callbacks and (done % self.callback_every == 0 or done == self.total_iters):
                info = {"iter": done, "phase": self.phase + 1, "student": self.student, "logs": logs,
                        "distiller": self}
                for cb in self.callbacks:
                    logs.update(cb(info) or {})
            if self.out is not None:
                if main and (done % c.log_every == 0 or done == self.total_iters):
                    self._log({"iter": done, "phase": self.phase + 1, **logs, "time_s": round(self.wall, 2)})
                if done % c.checkpoint_every == 0 or done % self.iters_per_phase == 0:
                    self.save_checkpoint()
        if self.out is not None and self.it == self.total_iters:
            done = (self.out / "config.json").exists() and io.read_config(self.out).get("complete", False)
            if not done:  # e.g. resumed with iters equal to the checkpoint's: write it as complete
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        self.student.eval()
        return self.student

    # Checkpoints ----------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> None:
        """Main process: write ``train_state/`` (atomic folder), then the student files (each atomic)."""
        if not self.accelerator.is_main_process:
            return
        c = self.config
        critic = self.critic_module
        for name, module in [("student", self.student), ("fake score", critic)]:
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise RuntimeError(f"non-finite {name} weights at iteration {self.it}{self._checkpoint_note()}")
        tensors: dict[str, torch.Tensor] = {}
        for k, e in enumerate(self.student.experts):
            tensors.update({f"expert_{k}.{n}": v for n, v in e.state_dict().items()})
        tensors.update({f"fake.{n}": v for n, v in critic.state_dict().items()})
        if self.save_init:
            tensors.update({f"init.{n}": v for n, v in self.init_net.state_dict().items()})
        opt_g, meta_g = io.flatten_optimizer(_raw(self.opt_generator), "optgen")
        opt_f, meta_f = io.flatten_optimizer(_raw(self.opt_critic), "optfake")
        tensors.update(opt_g)
        tensors.update(opt_f)
        others = self._other_phases_state(tensors)
        io.save_folder(self.out / "train_state", {
            "kind": "distill-train-state", "config": asdict(c), "iter": self.it, "phase": self.phase,
            "wall_time_s": self.wall, "opt_generator": meta_g, "opt_fake": meta_f, **others}, {"state": tensors})
        complete = self.it >= self.total_iters
        self.student.save(self.out, {"iters": self.it, "complete": complete, "wall_time_s": round(self.wall, 1),
                                     "seed": c.seed, "command": self.command, "train": c.flat(),
                                     "processes": self.world})

    def _other_phases_state(self, tensors: dict) -> dict:
        """Critics and optimizers of the kept phases other than the current one (schedules that revisit
        phases): adds ``fake<k>.*``, ``optgen<k>.*``, ``optfake<k>.*`` to ``tensors``, returns their JSON."""
        meta = {}
        for k, (_, critic, opt_g, opt_f) in sorted(self._phases.items()):
            if k == self.phase:
                continue
            module = self.accelerator.unwrap_model(critic)
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise RuntimeError(f"non-finite fake score {k + 1} weights at iteration {self.it}"
                                   f"{self._checkpoint_note()}")
            tensors.update({f"fake{k}.{n}": v for n, v in module.state_dict().items()})
            (tg, mg), (tf, mf) = io.flatten_optimizer(_raw(opt_g), f"optgen{k}"), io.flatten_optimizer(
                _raw(opt_f), f"optfake{k}")
            tensors.update({**tg, **tf})
            meta[str(k)] = {"opt_generator": mg, "opt_fake": mf}
        return {"other_phases": meta} if meta else {}

    def _load_other_phases(self, st: dict) -> None:
        t = st["tensors"]
        for key, m in st.get("other_phases", {}).items():
            k = int(key)
            self._phases[k] = self._build_phase(k)
            _, critic, opt_g, opt_f = self._phases[k]
            io.load_weights(self.accelerator.unwrap_model(critic), _part(t, f"fake{k}"), str(self.out))
            io.unflatten_optimizer(_raw(opt_g), t, m["opt_generator"], f"optgen{k}")
            io.unflatten_optimizer(_raw(opt_f), t, m["opt_fake"], f"optfake{k}")
        self._start_phase(self.phase)  # the trainable flags of the current phase again

    def _read_train_state(self) -> dict | None:
        st = read_train_state(self.out)
        if st is None:
            return None
        check_resume(self.config, st, self.out)
        st["tensors"] = io.read_tensors(self.out / "train_state", "state")
        return st

    def _load_train_state(self, st: dict) -> None:
        t = st["tensors"]
        for k, e in enumerate(self.student.experts):
            io.load_weights(e, _part(t, f"expert_{k}"), str(self.out))
        io.load_weights(self.critic_module, _part(t, "fake"), str(self.out))
        io.unflatten_optimizer(_raw(self.opt_generator), t, st["opt_generator"], "optgen")
        io.unflatten_optimizer(_raw(self.opt_critic), t, st["opt_fake"], "optfake")
        self._load_other_phases(st)
        self.it, self.wall = st["iter"], st["wall_time_s"]
        if self.accelerator.is_main_process:  # a run killed after its last checkpoint logged iterations past it
            io.truncate_log(self.out / "log.jsonl", self.it)


def _raw(opt):
    return opt.optimizer if hasattr(opt, "optimizer") else opt


def _part(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# Resuming ------------------------------------------------------------------------------------------

_RESUME_FREE = ("iters", "checkpoint_every", "log_every")  # may change on resume (iters: one-phase methods)


def normalise_teacher_spec(spec: str) -> str:
    """A teacher spec with its path made absolute (``diffusers:tiny-sd3`` == ``diffusers:/abs/tiny-sd3``,
    ``zoo:mnist/teacher`` == the shipped folder), so a resume compares what is meant, not how it is written."""
    spec = str(spec)
    if spec.startswith("oracle:"):
        return spec
    if spec.startswith("zoo:"):
        spec = io.resolve(spec)
    prefix, sep, rest = spec.partition(":")
    if sep and len(prefix) > 1 and not Path(spec).exists():  # a registered spec such as diffusers:PATH
        return f"{prefix}:{os.path.abspath(rest)}" if Path(rest).exists() else spec
    return os.path.abspath(spec) if Path(spec).exists() else spec


def _normalised(config_dict: dict) -> dict:
    """A run config as compared on resume: JSON types, teacher path absolute, method options complete."""
    d = json.loads(json.dumps(config_dict))
    d["teacher"] = normalise_teacher_spec(d["teacher"])
    try:  # the method's options with their defaults filled in: --noise-gain 100 equals leaving it out
        d["options"] = io.json_ready(DistillConfig.from_flat(**{**d, "options": d.get("options") or {}})
                                     .build_method().options)
    except (ValueError, TypeError):
        pass
    if isinstance(d.get("net"), dict) and isinstance(d["net"].get("prompts"), str) and d["net"]["prompts"]:
        d["net"]["prompts"] = os.path.abspath(d["net"]["prompts"])
    return d


def check_resume(config: DistillConfig, st: dict, out) -> None:
    """Refuse resuming ``out`` with settings other than the recorded ones, naming the first difference.

    Every setting must equal the recorded one (paths normalised, method options with defaults filled in),
    ``--seed`` included, except ``checkpoint_every`` / ``log_every``, and ``iters``: a method without
    phases may train longer (a larger ``--iters`` extends even a finished run); with phases the split of
    the iterations over the phases depends on it, so it cannot change.
    """
    mine, theirs = _normalised(asdict(config)), _normalised(st["config"])
    for key in mine:
        if key in _RESUME_FREE or key not in theirs:
            continue
        if mine[key] != theirs[key]:
            a, b = theirs[key], mine[key]
            if isinstance(a, dict) and isinstance(b, dict):  # name the differing entry of options / net
                k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                key, a, b = f"{key}.{k}", a.get(k), b.get(k)
            raise ValueError(f"cannot resume {out}: it was trained with {key}={a!r}, not {b!r} (leave the option "
                             f"out to keep the recorded value)")
    if config.iters != theirs["iters"] and config.build_method().num_phases > 1:
        raise ValueError(f"cannot resume {out} with --iters {config.iters}: it was trained with iters="
                         f"{theirs['iters']} split over {config.build_method().num_phases} phases, and the split "
                         f"cannot change (distill a new run, or keep --iters {theirs['iters']})")
    if st["iter"] > config.iters:
        raise ValueError(f"cannot resume {out} with --iters {config.iters}: it has already run {st['iter']} "
                         f"iterations")


def recorded_flat(out) -> dict:
    """The flat settings a run in ``out`` was started with (what ``distill --resume`` starts from)."""
    st = read_train_state(out)
    if st is None:
        raise ValueError(f"--resume: {str(out)!r} holds no run to resume")
    return DistillConfig(**st["config"]).flat()


def read_train_state(out) -> dict | None:
    """The ``train_state/`` config of a run folder, or None when there is none."""
    d = Path(out) / "train_state"
    if not d.exists():
        return None
    st = io.read_config(d)
    if st.get("kind") != "distill-train-state":
        raise ValueError(f"cannot resume: {d} is not a distillation run")
    return st


# Starting nets of oracle teachers, cached -----------------------------------------------------------

SHIPPED_INITS = Path(__file__).resolve().parents[2] / "assets" / "init"


def cache_dir() -> Path:
    """Where fitted starting nets are kept: ``$PDMD_CACHE`` or ``~/.cache/pdmd_lab``."""
    from pdmd_lab import safety

    return safety.env_cache()


def oracle_init_net(teacher_spec: str, teacher, net_cfg: dict, dataset, iters: int, seed: int, *,
                    progress: bool = True):
    """The net an oracle teacher's experts and critics start from: fitted once, cached in the process and
    on disk (``init-<hash>.safetensors``), so a short run starts in seconds."""
    from pdmd_lab.nets import build_net
    from pdmd_lab.teacher import fit_net_to_teacher

    key = json.dumps([teacher_spec, net_cfg, iters, seed], sort_keys=True)
    if key in _ORACLE_FITS:
        return _ORACLE_FITS[key]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, whatever the global RNG holds
        torch.manual_seed(seed)
        net = build_net(net_cfg)
    fname = f"init-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    f = cache_dir() / fname
    if not f.is_file() and (SHIPPED_INITS / fname).is_file():
        f = SHIPPED_INITS / fname  # the shipped recipes' starting nets (seed 0) travel with the kit
    if f.is_file():
        try:
            io.load_weights(net, io.read_tensors(f.parent, f.stem), str(f))
            _ORACLE_FITS[key] = net.eval()
            return _ORACLE_FITS[key]
        except ValueError:
            pass  # a corrupt cache entry is refitted
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = fit_net_to_teacher(teacher, net, dataset, iters=iters, seed=seed, progress=progress)
    f = cache_dir() / fname
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        io.save_weights_file(f, net.state_dict())
    except OSError:
        pass  # a read-only cache only costs time
    _ORACLE_FITS[key] = net
    return net


# One call ----------------------------------------------------------------------------------------------

TEACHER_LOADERS: dict[str, Callable] = {}  # spec prefix -> fn(config, device) -> (teacher, init_net, prior, info)
TEACHER_CLAIMS: dict[str, Callable] = {}  # spec prefix -> claims(spec) -> bool, for specs without that prefix


def register_teacher_loader(prefix: str, fn: Callable, claims: Callable | None = None) -> None:
    """Resolve teacher specs ``<prefix>:...`` (e.g. ``diffusers:PATH``) with ``fn(config, device, state)``
    returning ``(teacher, init_net, prior, info)``; ``info`` holds ``dataset``, ``shape`` and ``save_init``.
    ``claims(spec)``, when given, routes other specs to ``fn`` too (masked-diffusion teachers claim
    ``oracle:<token dataset>`` and their folders, :mod:`pdmd_lab.discrete`)."""
    TEACHER_LOADERS[prefix] = fn
    if claims is not None:
        TEACHER_CLAIMS[prefix] = claims


def teacher_loader(spec: str) -> Callable | None:
    """The registered loader of a teacher spec, or None for the kit's continuous specs."""
    for prefix, claims in TEACHER_CLAIMS.items():
        if claims(spec):
            return TEACHER_LOADERS[prefix]
    return TEACHER_LOADERS.get(spec.split(":", 1)[0] if ":" in spec else "")


def _continuous_setup(config: DistillConfig, device, state, progress: bool):
    """Teacher, starting net and prior for ``oracle:<dataset>`` and teacher folders."""
    from pdmd_lab.data import get_dataset
    from pdmd_lab.nets import MLPConfig, build_net, net_config_from_dict
    from pdmd_lab.teacher import OracleTeacher, load_teacher

    teacher = load_teacher(config.teacher, device)
    ds = get_dataset(getattr(teacher, "dataset", "") or config.teacher.split(":")[-1])
    if isinstance(teacher, OracleTeacher):
        net_cfg = net_config_from_dict(config.net) if config.net else MLPConfig(
            data_dim=ds.shape[0], num_classes=ds.num_classes)
        config.net = io.json_ready(net_cfg)
        if state is not None:  # resuming: the starting net is in the train state
            init = build_net(config.net)
            io.load_weights(init, _part(io.read_tensors(state, "state"), "init"), str(state))
        else:
            init = oracle_init_net(config.teacher, teacher, config.net, ds, config.init_iters, config.seed,
                                   progress=progress)
        save_init = True
    else:
        init, save_init = teacher, False
        config.net = io.json_ready(teacher.config)
    return teacher, init, GaussianPrior(ds.shape, ds.num_classes), {"dataset": ds.name, "shape": ds.shape,
                                                                     "save_init": save_init}


def distill(config: DistillConfig, out=None, **kwargs) -> Student:
    """Distill a teacher into a few-step student in one call: resolve the teacher spec, fit or load the
    starting net, build the method and the :class:`Distiller`, train."""
    return build_distiller(config, out, **kwargs).train()


def build_distiller(config: DistillConfig, out=None, *, progress: bool = True, **kwargs) -> Distiller:
    """Resolve the teacher spec and build the :class:`Distiller` (what :func:`distill` trains)."""
    method = config.build_method()
    main = int(os.environ.get("RANK", "0")) == 0  # before accelerate starts: bars on the main process only
    state = None
    if out is not None and read_train_state(out) is not None:
        state = Path(out) / "train_state"
    prefix = config.teacher.split(":", 1)[0] if ":" in config.teacher else ""
    if prefix and prefix not in TEACHER_LOADERS:
        from pdmd_lab.distill.methods import load_plugins

        load_plugins()  # e.g. pdmd_lab.backbones registers diffusers:PATH
    loader = teacher_loader(config.teacher)
    if loader is not None:
        teacher, init, prior, info = loader(config, "cpu", state)
    elif method.teacher_kind != "continuous":  # refused before a starting net is fitted for nothing
        raise ValueError(f"method {method.name!r} distils {method.teacher_kind} teachers; "
                         f"{config.teacher!r} is a continuous teacher")
    else:
        teacher, init, prior, info = _continuous_setup(config, "cpu", state, progress and main)
    kind = getattr(teacher, "teacher_kind", "continuous")
    if kind != method.teacher_kind:
        raise ValueError(f"method {method.name!r} distils {method.teacher_kind} teachers; "
                         f"{config.teacher!r} is a {kind} teacher")
    return Distiller(teacher, init, prior, method, config, out, dataset=info["dataset"], shape=info["shape"],
                     save_init=info.get("save_init", False), progress=progress and main, **kwargs)

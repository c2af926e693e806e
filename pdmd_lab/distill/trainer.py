"""One trainer for DMD, DMD2-SGTS, Phased DMD and DP-DMD (DESIGN.md §2).

The generator (the student's experts) and the fake score are updated in turn:
``fake_updates_per_generator_update`` calls of :meth:`Distiller.fake_score_step`, then one of
:meth:`Distiller.generator_step` (DMD2's two-time-scale rule). Phased DMD trains its phases in
order: phase k trains only expert k, earlier experts stay frozen, and every phase starts a fresh
fake score from the teacher.

A run folder holds the student (``config.json``, ``expert_k.safetensors``), ``log.jsonl`` and
``train_state/`` (every weight and optimizer state, for ``resume``). All randomness of iteration
``i`` comes from a generator seeded by ``(seed, i)``, so a resumed run ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from pdmd_lab import flow, io
from pdmd_lab.data import get_dataset
from pdmd_lab.distill import losses, rollouts
from pdmd_lab.nets import MLPConfig, build_net, net_config_from_dict
from pdmd_lab.sampling import sample_euler
from pdmd_lab.student import Student
from pdmd_lab.teacher import Guided, OracleTeacher, fit_net_to_teacher, iteration_generator, load_teacher

METHODS = ("dmd", "dmd2-sgts", "phased-dmd", "dp-dmd")
_ORACLE_FITS: dict = {}  # (teacher, net, iters, seed) -> net fitted to an oracle teacher
SAMPLER_OF = {"dmd": "euler", "dmd2-sgts": "renoise", "phased-dmd": "euler", "dp-dmd": "euler"}


@dataclass
class DistillConfig:
    teacher: str = "oracle:ring-mix"  # oracle:<gaussian-mixture dataset> or a teacher folder
    method: str = "phased-dmd"
    steps: int = 4
    phases: int = 4  # Phased DMD only; must divide steps
    cfg: float = 3.0  # CFG scale of the real score, standard form (1 = none)
    iters: int = 1000  # generator updates in total (Phased DMD: split equally over the phases)
    batch_size: int = 256
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4
    fake_updates_per_generator_update: int = 5
    weighting: str = "paper"  # "paper" (velocity, Eq. 9/10) or "dmd2" (x0 space, normalised)
    shift: float = 1.0  # time shift of the student's step times
    t_shift: float = 1.0  # time shift applied to the t drawn for the DMD and fake-score losses
    t_min: float = 0.02
    t_max: float | None = None  # None: 0.98 for dmd / dmd2-sgts / dp-dmd, 1.0 for phased-dmd (U(t_k, 1))
    dp_lambda: float = 0.05
    dp_t_anchor: float | None = None  # None: the end of the student's first step, t_1
    dp_anchor_steps: int = 8  # Euler steps of the teacher's anchor run
    grad_clip: float = 10.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    init_iters: int = 2000  # oracle teachers: iterations fitting the net experts and fake scores start from
    net: dict = field(default_factory=dict)  # oracle teachers: network config (default: the dataset's MLP)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.method == "dmd" and self.steps != 1:
            raise ValueError(f"method dmd is one-step: steps must be 1, got {self.steps}")
        if self.method == "dp-dmd" and self.steps < 2:
            raise ValueError("method dp-dmd needs steps >= 2 (its first step is anchored, the rest get DMD)")
        if self.method == "phased-dmd":
            flow.phase_boundaries(self.steps, self.phases)  # raises on a bad phase count
            if self.iters < self.phases:
                raise ValueError(f"iters={self.iters} must be >= phases={self.phases}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if self.weighting not in losses.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {losses.WEIGHTINGS}, got {self.weighting!r}")
        if self.t_max is None:
            self.t_max = 1.0 if self.method == "phased-dmd" else 0.98
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"t range ({self.t_min}, {self.t_max}) must satisfy 0 < t_min < t_max <= 1")
        for name in ("iters", "batch_size", "fake_updates_per_generator_update", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dp_t_anchor is not None and not 0 <= self.dp_t_anchor < 1:
            raise ValueError(f"dp_t_anchor must be in [0, 1), got {self.dp_t_anchor}")

    @property
    def num_phases(self) -> int:
        return self.phases if self.method == "phased-dmd" else 1


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


class Distiller:
    """Alternating DMD training of a few-step student against a (CFG) teacher.

    ``callback(info)`` runs every ``callback_every`` generator updates with
    ``info = {"iter", "phase", "student", "logs", "distiller"}``; a dict it returns is added to the log.
    """

    def __init__(self, config: DistillConfig, out: str | Path | None = None, *, progress: bool = True,
                 callbacks: list[Callable] | None = None, callback_every: int = 100, command: str = ""):
        from accelerate import Accelerator

        self.config, self.out, self.progress, self.command = config, Path(out) if out else None, progress, command
        self.callbacks, self.callback_every = list(callbacks or []), callback_every
        self.accelerator = Accelerator()
        self.device = self.accelerator.device
        c = config

        # Teacher (real score) and the network every expert and fake score starts from.
        self.teacher = load_teacher(c.teacher, self.device)
        self.dataset = get_dataset(getattr(self.teacher, "dataset", "") or c.teacher.split(":")[-1])
        self.real_score = Guided(self.teacher, c.cfg)
        if isinstance(self.teacher, OracleTeacher):
            net_cfg = net_config_from_dict(c.net) if c.net else MLPConfig(
                data_dim=self.dataset.shape[0], num_classes=self.dataset.num_classes)
            c.net = io.json_ready(net_cfg)
            self.init_net = None  # fitted below unless resuming
        else:
            self.init_net = self.teacher
            c.net = io.json_ready(self.teacher.config)

        # The student: K experts over the boundaries, all from the teacher's weights.
        self.ts = [float(t) for t in flow.step_times(c.steps, c.shift)]
        self.boundaries = [float(b) for b in flow.phase_boundaries(c.steps, c.num_phases, c.shift)]
        self.iters_per_phase = c.iters // c.num_phases
        self.total_iters = self.iters_per_phase * c.num_phases
        self.it, self.phase, self.wall = 0, 0, 0.0
        state = self._read_train_state() if self.out is not None else None
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, whatever the global RNG holds
            torch.manual_seed(c.seed)
            if state is None and self.init_net is None:
                key = json.dumps([c.teacher, c.net, c.init_iters, c.seed])
                if key not in _ORACLE_FITS:  # fitted once per process, shared by every run that asks again
                    _ORACLE_FITS[key] = fit_net_to_teacher(self.teacher, build_net(c.net), self.dataset,
                                                           iters=c.init_iters, seed=c.seed, progress=progress)
                self.init_net = _ORACLE_FITS[key]
            experts = [build_net(c.net) for _ in range(c.num_phases)]
        if self.init_net is not None:
            for e in experts:
                e.load_state_dict(self.init_net.state_dict())
        self.student = Student(experts, self.boundaries, self.ts, sampler=SAMPLER_OF[c.method],
                               dataset=self.dataset.name, shape=self.dataset.shape,
                               meta={"method": c.method, "teacher": c.teacher, "cfg": c.cfg}).to(self.device)
        self._start_phase(0 if state is None else state["phase"])
        if state is not None:
            self._load_train_state(state)

    # Phases and optimizers -----------------------------------------------------------------
    def _start_phase(self, phase: int) -> None:
        """Train expert ``phase`` from now on: freeze the others, new optimizers, new fake score."""
        c = self.config
        self.phase = phase
        for k, e in enumerate(self.student.experts):
            e.requires_grad_(k == phase).train(k == phase)
        self.generator = self.student.experts[phase]
        self.fake_score = build_net(c.net).to(self.device)
        if self.init_net is not None:
            self.fake_score.load_state_dict(self.init_net.state_dict())
        self.fake_score.train()
        betas = (0.0, 0.999)  # Phased DMD / DMD2 setting for both nets
        self.opt_generator = torch.optim.AdamW(self.generator.parameters(), lr=c.lr_generator, betas=betas,
                                               weight_decay=0.0)
        self.opt_fake = torch.optim.AdamW(self.fake_score.parameters(), lr=c.lr_fake, betas=betas, weight_decay=0.0)
        self.generator, self.fake_score, self.opt_generator, self.opt_fake = self.accelerator.prepare(
            self.generator, self.fake_score, self.opt_generator, self.opt_fake)

    # Rollouts and losses ---------------------------------------------------------------------
    def _draw(self, g: torch.Generator):
        """Noise and class labels of one batch."""
        c = self.config
        z = torch.randn((c.batch_size, *self.dataset.shape), generator=g).to(self.device)
        labels = torch.randint(0, self.dataset.num_classes, (c.batch_size,), generator=g).to(self.device)
        return z, labels

    def rollout(self, z, labels, g, *, grad: bool) -> rollouts.Rollout:
        m, net = self.config.method, self.generator
        if m == "dmd":
            return rollouts.one_step(net, z, labels, grad=grad)
        if m == "dmd2-sgts":
            return rollouts.sgts(net, z, labels, self.ts, g, grad=grad)
        if m == "phased-dmd":
            return rollouts.phased(self.student.experts, self.phase, z, labels, self.ts, self.boundaries, g,
                                   grad=grad)
        return rollouts.dp_dmd(net, z, labels, self.ts, grad=grad)

    def _draw_t(self, s: float, g: torch.Generator) -> torch.Tensor:
        """DMD / DMD2: ``t ~ U[t_min, t_max]``; Phased DMD phase k: ``t ~ U(max(t_k, t_min), t_max)``, nested."""
        c = self.config
        lo = max(s, c.t_min) if c.method == "phased-dmd" else c.t_min
        return flow.sample_t(c.batch_size, lo, c.t_max, shift=c.t_shift, generator=g).to(self.device)

    def fake_score_step(self, g: torch.Generator) -> dict:
        """Update the fake score on fresh student samples (flow matching, or the Eq. 11 target for s > 0)."""
        z, labels = self._draw(g)
        r = self.rollout(z, labels, g, grad=False)
        t = self._draw_t(r.s, g)
        eps = torch.randn(r.x.shape, generator=g).to(self.device)
        loss = losses.fake_score_loss(self.fake_score, r.x, r.s, t, eps, labels).mean()
        self._check(loss, "fake-score")
        self.opt_fake.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.fake_score.parameters(), self.config.grad_clip)
        self.opt_fake.step()
        return {"loss_fake": loss.item()}

    def generator_step(self, g: torch.Generator) -> dict:
        """Update the trained expert with the DMD gradient through the surrogate loss."""
        c = self.config
        z, labels = self._draw(g)
        r = self.rollout(z, labels, g, grad=True)
        t = self._draw_t(r.s, g)
        eps = torch.randn(r.x.shape, generator=g).to(self.device)
        with frozen(self.fake_score):
            grad, logs = losses.dmd_gradient(r.x, r.s, t, eps, self.real_score, self.fake_score, labels, c.weighting)
        loss = losses.surrogate_loss(r.x, grad).mean()
        logs["loss_dmd"] = loss.item()
        if c.method == "dp-dmd":
            anchor = self._dp_anchor_velocity(z, labels)
            loss_anchor = losses.dp_dmd_anchor_loss(r.v_first, anchor).mean()
            loss = loss + c.dp_lambda * loss_anchor
            logs["loss_anchor"] = loss_anchor.item()
        self._check(loss, "generator")
        self.opt_generator.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.generator.parameters(), c.grad_clip)
        self.opt_generator.step()
        logs["loss_generator"] = loss.item()
        return logs

    @torch.no_grad()
    def _dp_anchor_velocity(self, z, labels) -> torch.Tensor:
        """``v_anchor = (z - z_anchor) / (1 - t_anchor)``, ``z_anchor`` the teacher's CFG ODE run to ``t_anchor``."""
        c = self.config
        t_anchor = self.ts[1] if c.dp_t_anchor is None else c.dp_t_anchor
        ts = torch.linspace(1.0, t_anchor, c.dp_anchor_steps + 1, dtype=torch.float64)
        z_anchor = sample_euler(self.teacher, z, ts, class_labels=labels, cfg=c.cfg)
        return (z - z_anchor) / (1 - t_anchor)

    def _check(self, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            where = f"; the last good checkpoint in {self.out} is intact" if self.out else ""
            raise RuntimeError(f"non-finite {name} loss at iteration {self.it} (phase {self.phase + 1}){where}")

    # The loop -------------------------------------------------------------------------------
    def train(self) -> Student:
        """Run (or finish) training; returns the student."""
        c = self.config
        bar = tqdm(range(self.it, self.total_iters), initial=self.it, total=self.total_iters,
                   disable=not self.progress, desc=f"{c.method} {self.dataset.name}")
        t0 = time.time()
        wall0 = self.wall
        for it in bar:
            phase = it // self.iters_per_phase
            if phase != self.phase:
                self._start_phase(phase)
            self.it = it
            logs: dict = {}
            for f in range(c.fake_updates_per_generator_update):
                logs.update(self.fake_score_step(iteration_generator(c.seed, it, 1 + f)))
            logs.update(self.generator_step(iteration_generator(c.seed, it, 0)))
            self.it = done = it + 1
            self.wall = wall0 + time.time() - t0
            bar.set_postfix(phase=self.phase + 1, fake=f"{logs['loss_fake']:.3g}", gen=f"{logs['loss_generator']:.3g}")
            if self.callbacks and (done % self.callback_every == 0 or done == self.total_iters):
                info = {"iter": done, "phase": self.phase + 1, "student": self.student, "logs": logs,
                        "distiller": self}
                for cb in self.callbacks:
                    logs.update(cb(info) or {})
            if self.out is not None:
                if done % c.log_every == 0 or done == self.total_iters:
                    self._log({"iter": done, "phase": self.phase + 1, **logs, "time_s": round(self.wall, 2)})
                end_of_phase = done % self.iters_per_phase == 0
                if done % c.checkpoint_every == 0 or end_of_phase:
                    self.save_checkpoint()
        if self.out is not None and self.it == self.total_iters:
            done = (self.out / "config.json").exists() and io.read_config(self.out).get("complete", False)
            if not done:  # e.g. resumed with iters equal to the checkpoint's: write it as complete
                self.save_checkpoint()
        self.student.eval()
        return self.student

    # Checkpoints ------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> None:
        """Write ``train_state/`` (atomic folder), then the student files (each atomic)."""
        c = self.config
        for name, module in [("student", self.student), ("fake score", self.fake_score)]:
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise RuntimeError(f"non-finite {name} weights at iteration {self.it}; the last good checkpoint"
                                   f" in {self.out} is intact")
        tensors: dict[str, torch.Tensor] = {}
        for k, e in enumerate(self.student.experts):
            tensors.update({f"expert_{k}.{n}": v for n, v in e.state_dict().items()})
        tensors.update({f"fake.{n}": v for n, v in self.fake_score.state_dict().items()})
        if isinstance(self.teacher, OracleTeacher):
            tensors.update({f"init.{n}": v for n, v in self.init_net.state_dict().items()})
        opt_g, meta_g = io.flatten_optimizer(self.opt_generator, "optgen")
        opt_f, meta_f = io.flatten_optimizer(self.opt_fake, "optfake")
        tensors.update(opt_g)
        tensors.update(opt_f)
        io.save_folder(self.out / "train_state", {
            "kind": "distill-train-state", "config": asdict(c), "iter": self.it, "phase": self.phase,
            "wall_time_s": self.wall, "opt_generator": meta_g, "opt_fake": meta_f}, {"state": tensors})
        complete = self.it >= self.total_iters
        self.student.save(self.out, {"iters": self.it, "complete": complete, "wall_time_s": round(self.wall, 1),
                                     "seed": c.seed, "command": self.command, "train": asdict(c)})

    def _read_train_state(self) -> dict | None:
        d = self.out / "train_state"
        if not d.exists():
            return None
        st = io.read_config(d)
        if st.get("kind") != "distill-train-state":
            raise ValueError(f"cannot resume: {d} is not a distillation run")
        mine, theirs = asdict(self.config), st["config"]
        keys = ["teacher", "method", "steps", "phases", "cfg", "shift", "batch_size", "net"]
        if self.config.method == "phased-dmd":
            keys.append("iters")  # the phase split depends on it; other methods may resume to train longer
        elif st["iter"] > self.config.iters:
            raise ValueError(f"cannot resume {self.out}: it has already run {st['iter']} > iters={self.config.iters}")
        for key in keys:
            if json.loads(json.dumps(mine[key])) != theirs[key]:
                raise ValueError(f"cannot resume {self.out}: it was trained with {key}={theirs[key]!r}, "
                                 f"not {mine[key]!r}")
        st["tensors"] = io.read_tensors(d, "state")
        return st

    def _load_train_state(self, st: dict) -> None:
        t = st["tensors"]

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in t.items() if k.startswith(prefix + ".")}

        if isinstance(self.teacher, OracleTeacher):
            self.init_net = build_net(self.config.net)
            io.load_weights(self.init_net, part("init"), str(self.out))
        for k, e in enumerate(self.student.experts):
            io.load_weights(e, part(f"expert_{k}"), str(self.out))
        io.load_weights(self.accelerator.unwrap_model(self.fake_score), part("fake"), str(self.out))
        io.unflatten_optimizer(self.opt_generator.optimizer if hasattr(self.opt_generator, "optimizer")
                               else self.opt_generator, t, st["opt_generator"], "optgen")
        io.unflatten_optimizer(self.opt_fake.optimizer if hasattr(self.opt_fake, "optimizer") else self.opt_fake,
                               t, st["opt_fake"], "optfake")
        self.it, self.wall = st["iter"], st["wall_time_s"]


def distill(config: DistillConfig, out=None, **kwargs) -> Student:
    """Distill a teacher into a few-step student in one call (see :class:`Distiller`)."""
    return Distiller(config, out, **kwargs).train()


"""Few-step samplers with one interface: distilled students and teachers are a velocity plus step times.

* :class:`Sampler`: the interface, written once. A velocity ``v = self.velocity(x, t, labels)``,
  step times ``t_0 = 1 > ... > t_N``, and a sampler function from :data:`pdmd_lab.sampling.SAMPLERS`
  (Euler, DMD2's re-noising sampler, or one a user registers).
* :class:`Student`: ``K`` experts routed by time: a step starting at ``t in (t_k, t_{k-1}]`` uses
  expert k (Phased DMD §3). One expert is the single-network student of DMD, DMD2-SGTS and DP-DMD.
* :class:`TeacherSampler`: ``Guided(teacher, cfg)`` plus its step count, so that tables and the app
  treat "teacher, 50 steps" like any student.

``sample(class_labels, seed=0, *, noise=None, return_trajectory=False)``; the trajectory is the
list of states ``[x_{t_0}=z, x_{t_1}, ..., x_{t_N}]``. Students save to and load from one folder
format (:mod:`pdmd_lab.io`): ``config.json`` plus ``expert_{k}.safetensors``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from pdmd_lab import flow, io
from pdmd_lab.nets import Denoiser, build_net
from pdmd_lab.sampling import get_sampler, guided_velocity, nfe


def _labels(class_labels, device) -> torch.Tensor:
    return torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)


class Sampler(nn.Module):
    """A velocity with step times and a named sampler: what every student and teacher row is."""

    sampler: str = "euler"
    cfg: float = 1.0  # guidance applied inside ``velocity`` (teachers); students have it distilled in
    shape: tuple[int, ...] = ()
    dataset: str = ""
    meta: dict

    def velocity(self, x: torch.Tensor, t, class_labels) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, t, class_labels=None):
        return self.velocity(x, t, class_labels)

    @property
    def num_steps(self) -> int:
        return len(self.step_times) - 1

    @property
    def nfe(self) -> int:
        return nfe(self.num_steps, self.cfg)

    def _device(self):
        return next(itertools.chain(self.parameters(), self.buffers()), torch.zeros(())).device

    @torch.no_grad()
    def sample(self, class_labels, seed: int = 0, *, noise=None, return_trajectory: bool = False, callback=None):
        """One output per label from the seeded initial state (or the given ``noise``); ``callback`` gets the
        sampler's dict after every step (e.g. to report progress)."""
        device = self._device()
        labels = _labels(class_labels, device)
        spec = get_sampler(self.sampler)
        x = spec.initial(self.shape, len(labels), torch.Generator().manual_seed(int(seed)), device) \
            if noise is None else noise.to(device)
        g = torch.Generator().manual_seed(int(seed) + 1)  # the sampler's own draws (re-noising, tokens)
        traj = [x]

        def each_step(d):
            if return_trajectory:
                traj.append(d["x_next"])
            if callback is not None:
                callback(d)

        out = spec.run(self, x, self.step_times, class_labels=labels, generator=g,
                       callback=each_step if return_trajectory or callback is not None else None)
        return (out, traj) if return_trajectory else out


class Student(Sampler):
    """``K`` experts over a boundary list ``1 = t_0 > ... > t_K = 0`` and ``N`` step times."""

    def __init__(self, experts: list[Denoiser], boundaries, step_times, *, sampler: str = "euler",
                 dataset: str = "", shape: tuple[int, ...] = (), meta: dict | None = None):
        super().__init__()
        get_sampler(sampler)  # raises on an unknown name
        self.experts = nn.ModuleList(experts)
        self.boundaries = torch.as_tensor(boundaries, dtype=torch.float64)
        self.step_times = torch.as_tensor(step_times, dtype=torch.float64)
        if len(self.boundaries) != len(self.experts) + 1:
            raise ValueError(f"{len(self.experts)} experts need {len(self.experts) + 1} boundaries, "
                             f"got {len(self.boundaries)}")
        self.sampler, self.dataset, self.shape = sampler, dataset, tuple(shape)
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return self.experts[0].num_classes

    def expert_index(self, t: float) -> int:
        """Index k (0-based) of the expert whose subinterval ``(t_{k+1}, t_k]`` holds ``t``."""
        return int((self.boundaries[1:] >= float(t) - 1e-9).sum().clamp(max=len(self.experts) - 1))

    def velocity(self, x: torch.Tensor, t, class_labels) -> torch.Tensor:
        return self.experts[self.expert_index(float(torch.as_tensor(t).reshape(-1)[0]))](x, t, class_labels)

    def describe(self) -> str:
        return f"{self.meta.get('method', 'student')}, {self.num_steps} step(s), {len(self.experts)} expert(s)"

    # Save / load ---------------------------------------------------------------------------
    def config(self) -> dict:
        return {"kind": "student", "dataset": self.dataset, "shape": list(self.shape), "sampler": self.sampler,
                "boundaries": self.boundaries.tolist(), "step_times": self.step_times.tolist(),
                "net": io.json_ready(self.experts[0].config), **self.meta}

    def save(self, path, extra: dict | None = None) -> Path:
        """Write ``config.json`` and one ``expert_{k}.safetensors`` per expert, each file atomically."""
        tensors = {f"expert_{k}": e.state_dict() for k, e in enumerate(self.experts)}
        return io.save_model_files(path, {**self.config(), **(extra or {})}, tensors)

    @classmethod
    def from_folder(cls, path, cfg: dict, device="cpu") -> "Student":
        experts = []
        for k in range(len(cfg["boundaries"]) - 1):
            net = build_net(cfg["net"])
            io.load_weights(net, io.read_tensors(path, f"expert_{k}"), str(path))
            experts.append(net.eval().requires_grad_(False))
        known = {"kind", "dataset", "shape", "sampler", "boundaries", "step_times", "net"}
        return cls(experts, cfg["boundaries"], cfg["step_times"], sampler=cfg["sampler"], dataset=cfg["dataset"],
                   shape=tuple(cfg["shape"]), meta={k: v for k, v in cfg.items() if k not in known}).to(device)

    @classmethod
    def load(cls, path, device="cpu") -> "Student":
        return io.load_folder(path, device=device, kinds=("student",))


io.register_kind("student", Student.from_folder)


class TeacherSampler(Sampler):
    """A teacher run with ``steps`` Euler steps and CFG ``cfg``, with the same interface as students."""

    def __init__(self, model: nn.Module, *, steps: int = 50, cfg: float = 1.0, shift: float = 1.0,
                 dataset: str = "", shape: tuple[int, ...] = (), meta: dict | None = None):
        super().__init__()
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        self.model = model
        self.step_times = flow.step_times(steps, shift)
        self.cfg, self.shift, self.dataset, self.shape = cfg, shift, dataset, tuple(shape)
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def experts(self):
        return [self.model]

    @property
    def boundaries(self):
        return torch.tensor([1.0, 0.0], dtype=torch.float64)

    def expert_index(self, t: float) -> int:
        return 0

    def velocity(self, x, t, class_labels):
        return guided_velocity(self.model, x, t, class_labels, self.cfg)

    def with_steps(self, steps: int, cfg: float | None = None) -> "TeacherSampler":
        return TeacherSampler(self.model, steps=steps, cfg=self.cfg if cfg is None else cfg, shift=self.shift,
                              dataset=self.dataset, shape=self.shape, meta=self.meta)

    def describe(self) -> str:
        return f"teacher, {self.num_steps} Euler step(s), CFG {self.cfg:g}"


# Kept as names: a student with one expert, and one with several.
FewStepStudent = PhasedStudent = Student

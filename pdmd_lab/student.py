"""Few-step samplers with one interface: distilled students and teachers run with N Euler steps.

* :class:`FewStepStudent`: one network over all steps (DMD, DMD2-SGTS, DP-DMD).
* :class:`PhasedStudent`: a mixture of experts routed by time: a step starting at
  ``t in (t_k, t_{k-1}]`` uses expert k (Phased DMD §3).
* :class:`TeacherSampler`: a teacher with its step count and CFG, so that tables and the app can
  treat "teacher, 50 steps" and "teacher, 4 steps" like any student.

Every sampler has ``sample(class_labels, seed=0, *, noise=None, return_trajectory=False)``;
the trajectory is the list of states ``[x_{t_0}=z, x_{t_1}, ..., x_{t_N}]`` after every step.
Students are saved as a folder: ``config.json`` plus ``expert_{k}.safetensors`` (atomic).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from pdmd_lab import flow, io
from pdmd_lab.nets import Denoiser, build_net
from pdmd_lab.sampling import guided_velocity, nfe

SAMPLERS = ("euler", "renoise")  # Euler ODE steps, or DMD2's predict-x0-then-renoise steps


def _noise(shape, seed, batch: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((batch, *shape), generator=g).to(device)


def _labels(class_labels, device) -> torch.Tensor:
    return torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)


class Student(nn.Module):
    """``K`` experts over a boundary list ``1 = t_0 > ... > t_K = 0`` and ``N`` step times."""

    def __init__(self, experts: list[Denoiser], boundaries, step_times, *, sampler: str = "euler",
                 dataset: str = "", shape: tuple[int, ...] = (), meta: dict | None = None):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.experts = nn.ModuleList(experts)
        self.boundaries = torch.as_tensor(boundaries, dtype=torch.float64)
        self.step_times = torch.as_tensor(step_times, dtype=torch.float64)
        if len(self.boundaries) != len(self.experts) + 1:
            raise ValueError(f"{len(self.experts)} experts need {len(self.experts) + 1} boundaries, "
                             f"got {len(self.boundaries)}")
        self.sampler = sampler
        self.dataset = dataset
        self.shape = tuple(shape)
        self.meta = dict(meta or {})

    # Routing -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.experts[0].num_classes

    @property
    def num_steps(self) -> int:
        return len(self.step_times) - 1

    @property
    def nfe(self) -> int:
        return self.num_steps

    def expert_index(self, t: float) -> int:
        """Index k (0-based) of the expert whose subinterval ``(t_{k+1}, t_k]`` holds ``t``."""
        return int((self.boundaries[1:] >= float(t) - 1e-9).sum().clamp(max=len(self.experts) - 1))

    def velocity(self, x: torch.Tensor, t: float, class_labels) -> torch.Tensor:
        return self.experts[self.expert_index(t)](x, t, class_labels)

    def step(self, x, i: int, class_labels, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i`` from ``t_i`` to ``t_{i+1}``; returns (next state, x0 estimate)."""
        t, t_next = float(self.step_times[i]), float(self.step_times[i + 1])
        v = self.velocity(x, t, class_labels)
        x0 = flow.x0_from_velocity(x, v, t)
        if self.sampler == "renoise" and t_next > 0:
            eps = torch.randn(x.shape, generator=generator).to(x.device)
            return flow.add_noise(x0, eps, t_next), x0
        return x + (t_next - t) * v, x0

    @torch.no_grad()
    def sample(self, class_labels, seed: int = 0, *, noise=None, return_trajectory: bool = False):
        """Sample one output per label from the seeded noise (or the given ``noise``)."""
        device = next(self.parameters()).device
        labels = _labels(class_labels, device)
        x = _noise(self.shape, seed, len(labels), device) if noise is None else noise.to(device)
        g = torch.Generator().manual_seed(int(seed) + 1)  # re-noising draws (renoise sampler)
        traj = [x]
        for i in range(self.num_steps):
            x, _ = self.step(x, i, labels, g)
            traj.append(x)
        return (x, traj) if return_trajectory else x

    def describe(self) -> str:
        return f"{self.meta.get('method', 'student')}, {self.num_steps} step(s), {len(self.experts)} expert(s)"

    # Save / load ---------------------------------------------------------------------------
    def config(self) -> dict:
        return {"kind": "student", "dataset": self.dataset, "shape": list(self.shape), "sampler": self.sampler,
                "boundaries": self.boundaries.tolist(), "step_times": self.step_times.tolist(),
                "net": io.json_ready(self.experts[0].config), **self.meta}

    def save(self, path, extra: dict | None = None) -> Path:
        """Write ``config.json`` and one ``expert_{k}.safetensors`` per expert, atomically."""
        tensors = {f"expert_{k}": e.state_dict() for k, e in enumerate(self.experts)}
        return io.save_model_files(path, {**self.config(), **(extra or {})}, tensors)

    @classmethod
    def load(cls, path, device="cpu") -> "Student":
        cfg = io.read_config(path)
        if cfg.get("kind") != "student":
            raise ValueError(f"{str(path)!r} is not a student folder (its config says kind={cfg.get('kind')!r})")
        n_experts = len(cfg["boundaries"]) - 1
        experts = []
        for k in range(n_experts):
            net = build_net(cfg["net"])
            io.load_weights(net, io.read_tensors(path, f"expert_{k}"), str(path))
            experts.append(net.eval().requires_grad_(False))
        known = {"kind", "dataset", "shape", "sampler", "boundaries", "step_times", "net"}
        klass = PhasedStudent if n_experts > 1 else FewStepStudent
        s = Student.__new__(klass)
        Student.__init__(s, experts, cfg["boundaries"], cfg["step_times"], sampler=cfg["sampler"],
                         dataset=cfg["dataset"], shape=tuple(cfg["shape"]),
                         meta={k: v for k, v in cfg.items() if k not in known})
        return s.to(device)


class FewStepStudent(Student):
    """One network for every step (DMD 1-step, DMD2-SGTS, DP-DMD)."""

    def __init__(self, net: Denoiser, step_times, **kwargs):
        super().__init__([net], [1.0, 0.0], step_times, **kwargs)

    @property
    def net(self) -> Denoiser:
        return self.experts[0]


class PhasedStudent(Student):
    """Phased DMD's mixture of experts: expert k owns steps with ``t in (t_k, t_{k-1}]``."""


class TeacherSampler(nn.Module):
    """A teacher run with Euler steps and CFG, with the same ``sample`` interface as students."""

    def __init__(self, model: nn.Module, *, steps: int = 50, cfg: float = 1.0, shift: float = 1.0,
                 dataset: str = "", shape: tuple[int, ...] = (), meta: dict | None = None):
        super().__init__()
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        self.model = model
        self.step_times = flow.step_times(steps, shift)
        self.cfg, self.dataset, self.shape = cfg, dataset, tuple(shape)
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def num_steps(self) -> int:
        return len(self.step_times) - 1

    @property
    def nfe(self) -> int:
        return nfe(self.num_steps, self.cfg)

    @property
    def experts(self):
        return [self.model]

    @property
    def boundaries(self):
        return torch.tensor([1.0, 0.0], dtype=torch.float64)

    def expert_index(self, t: float) -> int:
        return 0

    def with_steps(self, steps: int, cfg: float | None = None) -> "TeacherSampler":
        return TeacherSampler(self.model, steps=steps, cfg=self.cfg if cfg is None else cfg,
                              dataset=self.dataset, shape=self.shape, meta=self.meta)

    def step(self, x, i: int, class_labels, generator=None):
        t, t_next = float(self.step_times[i]), float(self.step_times[i + 1])
        v = guided_velocity(self.model, x, t, class_labels, self.cfg)
        return x + (t_next - t) * v, flow.x0_from_velocity(x, v, t)

    @torch.no_grad()
    def sample(self, class_labels, seed: int = 0, *, noise=None, return_trajectory: bool = False):
        device = next(itertools.chain(self.model.parameters(), self.model.buffers()), torch.zeros(())).device
        labels = _labels(class_labels, device)
        x = _noise(self.shape, seed, len(labels), device) if noise is None else noise.to(device)
        traj = [x]
        for i in range(self.num_steps):
            x, _ = self.step(x, i, labels)
            traj.append(x)
        return (x, traj) if return_trajectory else x

    def describe(self) -> str:
        return f"teacher, {self.num_steps} Euler step(s), CFG {self.cfg:g}"

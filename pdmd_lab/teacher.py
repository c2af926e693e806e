"""Teachers: flow-matching training (accelerate), the exact oracle for Gaussian mixtures, CFG, loading.

A teacher folder holds ``config.json`` (``kind: teacher``) and ``model.safetensors`` (EMA weights);
its ``train_state/`` subfolder (raw weights, optimizer, step) lets training resume.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pdmd_lab import flow, io
from pdmd_lab.data import DATASETS, GaussianMixture, get_dataset
from pdmd_lab.nets import Denoiser, build_net, default_net_config, net_config_from_dict
from pdmd_lab.sampling import guided_velocity


class OracleTeacher(Denoiser):
    """Exact velocity ``E[eps - x0 | x_t, class]`` of a Gaussian mixture: a teacher with no training.

    Label ``num_classes`` (or None) gives the unconditional velocity, so CFG is exact too.
    """

    def __init__(self, gmm: GaussianMixture, dataset: str = ""):
        super().__init__()
        self.gmm = gmm
        self.dataset = dataset
        self._num_classes = gmm.num_classes
        self._on_device: dict = {}
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def forward(self, x, t, class_labels=None):
        t = self._times(t, x.shape[0], x)
        labels = None if class_labels is None else self._labels(class_labels, x.shape[0], x.device)
        if x.device.type == "cpu":
            return self.gmm.velocity(x, t.detach(), labels)
        if str(x.device) not in self._on_device:  # float64 mixture on the nets' device (GPU runs)
            self._on_device[str(x.device)] = self.gmm.to(x.device)
        return self._on_device[str(x.device)].velocity(x, t.detach(), labels)


class Guided(nn.Module):
    """A teacher with classifier-free guidance baked in: ``forward`` returns the CFG velocity."""

    def __init__(self, model: nn.Module, cfg: float):
        super().__init__()
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        self.model, self.cfg = model, cfg

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def forward(self, x, t, class_labels=None):
        return guided_velocity(self.model, x, t, class_labels, self.cfg)


@dataclass
class TeacherConfig:
    data: str = "ring-mix"
    iters: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200  # linear learning-rate warm-up iterations
    weight_decay: float = 0.0
    label_dropout: float = 0.1  # share of labels replaced by the null class, for CFG
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    net: dict = field(default_factory=dict)  # network config; the dataset's default when empty

    def __post_init__(self):
        get_dataset(self.data)
        for name in ("iters", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


def iteration_generator(seed: int, it: int, stream: int = 0) -> torch.Generator:
    """A generator seeded by (seed, iteration, stream): resumed runs draw exactly the same numbers."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + it) * 1009 + stream)
    return g


def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema <- decay ema + (1 - decay) net``, parameter by parameter."""
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)


def flow_matching_loss(net, x0, labels, generator) -> torch.Tensor:
    """Conditional flow matching: ``|| net(x_t, t, c) - (eps - x0) ||^2`` with ``t ~ U(0, 1)``, per sample."""
    b = x0.shape[0]
    t = torch.rand(b, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    v = net(flow.add_noise(x0, eps, t), t, labels)
    return ((v - (eps - x0)) ** 2).flatten(1).mean(1)


def train_teacher(config: TeacherConfig, out: str | Path, *, resume: bool = True, progress: bool = True,
                  command: str = "") -> Path:
    """Train a flow-matching teacher with EMA and label dropout; write and return the teacher folder.

    Built on ``accelerate``: the same loop runs on CPU, one GPU, or several with ``accelerate launch``.
    Resumes from ``out/train_state`` when it exists and matches the config.
    """
    ds = get_dataset(config.data)
    net_cfg = net_config_from_dict(config.net) if config.net else default_net_config(ds)
    config.net = asdict(net_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_net(net_cfg)
    return train_denoiser(config, net, out, kind="teacher", loss_fn=flow_matching_loss, resume=resume,
                          progress=progress, command=command)


def train_denoiser(config, net: nn.Module, out: str | Path, *, kind: str, loss_fn, resume: bool = True,
                   progress: bool = True, command: str = "") -> Path:
    """The one teacher loop, for flow-matching and masked-diffusion teachers alike.

    ``config`` is a :class:`TeacherConfig` or a config with the same fields (``config.net`` already the
    JSON config of ``net``); ``loss_fn(net, x0, labels, generator)`` returns per-sample losses. EMA and label
    dropout (the null class, for CFG); atomic checkpoints every ``checkpoint_every``; all randomness of
    iteration ``i`` comes from a generator seeded by ``(seed, i)``, so a resumed run ends where an
    uninterrupted one does. Writes ``out`` with ``config.json`` (``kind``) and ``model.safetensors`` (EMA).
    """
    from accelerate import Accelerator

    out = Path(out)
    ds = get_dataset(config.data)
    accelerator = Accelerator()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, wall = 0, 0.0

    state_dir = out / "train_state"
    if resume and state_dir.exists():
        st_cfg = io.read_config(state_dir)
        if st_cfg.get("kind") != f"{kind}-train-state" or st_cfg["config"]["data"] != config.data:
            raise ValueError(f"cannot resume: {state_dir} is not a {kind} run on {config.data!r}")
        if st_cfg["config"]["net"] != json.loads(json.dumps(config.net)):
            raise ValueError(f"cannot resume: {state_dir} was trained with another network config")
        mine = json.loads(json.dumps(asdict(config)))
        for key in sorted(set(mine) - {"iters", "checkpoint_every", "net"}):  # --seed, --lr... must not change
            if key in st_cfg["config"] and st_cfg["config"][key] != mine[key]:
                raise ValueError(f"cannot resume {out}: it was trained with {key}={st_cfg['config'][key]!r}, not "
                                 f"{mine[key]!r} (pass --overwrite to start it again)")
        if st_cfg["step"] > config.iters:
            raise ValueError(f"cannot resume {out} with --iters {config.iters}: it has already run {st_cfg['step']}")
        tensors = io.read_tensors(state_dir, "state")
        io.load_weights(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, str(state_dir))
        io.load_weights(ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, str(state_dir))
        io.unflatten_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("opt.")}, st_cfg["optimizer"],
                               "opt")
        start, wall = st_cfg["step"], st_cfg["wall_time_s"]

    ema.to(accelerator.device)
    net, opt = accelerator.prepare(net, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (start + i + 1) / max(1, config.warmup)))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    if accelerator.is_main_process:  # iterations logged after the checkpoint we resume from are run again
        io.truncate_log(log_path, start)
    bar = tqdm(range(start, config.iters), initial=start, total=config.iters, disable=not progress,
               desc=f"{kind} {config.data}")
    t0 = time.time()
    for it in bar:
        g = iteration_generator(config.seed, it)
        x0, labels = ds.sample(config.batch_size, seed=g)
        drop = torch.rand(config.batch_size, generator=g) < config.label_dropout
        labels = torch.where(drop, torch.full_like(labels, ds.num_classes), labels)
        x0, labels = x0.to(accelerator.device), labels.to(accelerator.device)
        loss = loss_fn(net, x0, labels, g).mean()
        if not torch.isfinite(loss):
            kept = (f"the last checkpoint (iteration {io.read_config(state_dir)['step']}) in {out} is intact"
                    if (state_dir / "config.json").is_file() else "no checkpoint was written")
            raise RuntimeError(f"non-finite teacher loss at iteration {it}; {kept}")
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        ema_update(ema, accelerator.unwrap_model(net), min(config.ema_decay, (1 + it) / (10 + it)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = it + 1
        if accelerator.is_main_process and (done % 50 == 0 or done == config.iters):
            with open(log_path, "a") as f:
                f.write(json.dumps({"iter": done, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                                    "time_s": wall + time.time() - t0}) + "\n")
        if accelerator.is_main_process and (done % config.checkpoint_every == 0 or done == config.iters):
            _save(out, kind, config, accelerator.unwrap_model(net), ema, opt, done, wall + time.time() - t0, command)
    accelerator.wait_for_everyone()
    return out


def _save(out: Path, kind: str, config, net, ema, opt, step: int, wall: float, command: str) -> None:
    opt_tensors, opt_meta = io.flatten_optimizer(opt, "opt")
    state = {**{f"net.{k}": v for k, v in net.state_dict().items()},
             **{f"ema.{k}": v for k, v in ema.state_dict().items()}, **opt_tensors}
    io.save_folder(out / "train_state", {"kind": f"{kind}-train-state", "config": asdict(config), "step": step,
                                          "wall_time_s": wall, "optimizer": opt_meta}, {"state": state})
    meta = {"kind": kind, "dataset": config.data, "net": config.net, "iters": step,
            "wall_time_s": round(wall, 1), "seed": config.seed, "command": command, "train": asdict(config)}
    io.save_model_files(out, meta, {"model": ema.state_dict()})


def fit_net_to_teacher(teacher, net: nn.Module, dataset, *, iters: int = 2000, batch_size: int = 512,
                       lr: float = 1e-3, seed: int = 0, progress: bool = True) -> nn.Module:
    """Regress a network onto a teacher's velocity, ``|| net(x_t, t, c) - teacher(x_t, t, c) ||^2``.

    Oracle teachers have no weights; distillation starts experts and fake scores from such a fit
    (10% null labels, so the unconditional branch is fitted too). Regressing the exact velocity has
    far less variance than flow matching on samples, so a few thousand steps suffice.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in tqdm(range(iters), disable=not progress, desc="fit net to teacher"):
        x0, labels = dataset.sample(batch_size, seed=g)
        drop = torch.rand(batch_size, generator=g) < 0.1
        labels = torch.where(drop, torch.full_like(labels, dataset.num_classes), labels)
        t = torch.rand(batch_size, generator=g)
        x_t = flow.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        with torch.no_grad():
            target = teacher(x_t, t, labels)
        loss = ((net(x_t, t, labels) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def load_teacher(spec: str | Path, device="cpu") -> Denoiser:
    """``oracle:<dataset>`` (exact Gaussian-mixture velocity) or a teacher folder; ValueError otherwise."""
    spec = str(spec)
    if spec.startswith("oracle:"):
        name = spec.split(":", 1)[1]
        ds = get_dataset(name)
        if ds.gmm is None:
            oracles = ", ".join(n for n, d in DATASETS.items() if d.gmm is not None)
            raise ValueError(f"no oracle for dataset {name!r}: only Gaussian mixtures have one ({oracles})")
        return OracleTeacher(ds.gmm, name)
    return io.load_folder(io.resolve(spec), device=device, kinds=("teacher",))


def _teacher_from_folder(path, cfg: dict, device) -> Denoiser:
    net = build_net(cfg["net"])
    io.load_weights(net, io.read_tensors(path, "model"), str(path))
    net.dataset = cfg["dataset"]
    return net.eval().requires_grad_(False).to(device)


io.register_kind("teacher", _teacher_from_folder)


def teacher_dataset(teacher) -> str:
    """Name of the dataset a loaded teacher models."""
    return getattr(teacher, "dataset", "")


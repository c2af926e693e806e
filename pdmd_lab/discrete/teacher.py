"""Masked-diffusion teachers: MDLM training (accelerate, EMA, label dropout, atomic checkpoints, resume) and loading.

Mirrors :mod:`pdmd_lab.teacher`. A teacher folder holds ``config.json`` (``kind: masked-teacher``) and
``model.safetensors`` (EMA weights); ``train_state/`` (raw weights, optimizer, step) lets training resume.
``load_masked_teacher("oracle:ring-mix-tokens")`` gives the exact two-token oracle instead.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdmd_lab import io
from pdmd_lab.data import DATASETS, get_dataset
from pdmd_lab.discrete.masking import check_tokens, mask_tokens
from pdmd_lab.discrete.nets import MaskedDenoiser, build_net, default_net_config, net_config_from_dict
from pdmd_lab.discrete.oracle import TokenOracle, ring_mix_tokens
from pdmd_lab.teacher import iteration_generator

ORACLES = {"ring-mix-tokens": ring_mix_tokens}  # token datasets with an exact joint
KIND = "masked-teacher"


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over the ``masked`` positions of ``CE(target | softmax(logits))``; 0 where none is masked.

    ``logits`` ``(B, *S, V)``; ``target`` either tokens ``(B, *S)`` (one-hot targets) or probabilities
    ``(B, *S, V)`` (soft targets); ``masked`` ``(B, *S)`` bool.
    """
    logp = F.log_softmax(logits.float(), -1)
    if target.dtype.is_floating_point:
        ce = -(target * logp).sum(-1)
    else:
        ce = -logp.gather(-1, target.clamp(0, logits.shape[-1] - 1)[..., None])[..., 0]
    ce = torch.where(masked, ce, torch.zeros_like(ce)).flatten(1)  # (B, L)
    return ce.sum(1) / masked.flatten(1).sum(1).clamp_min(1)


def masked_diffusion_loss(net, x0: torch.Tensor, labels, generator: torch.Generator | None = None) -> torch.Tensor:
    """MDLM loss (Sahoo et al. 2024): ``t ~ U(0, 1)``, ``z_t ~ q(z_t | x0)``, cross entropy on the masked positions.

    Per sample, the mean over its masked positions: MDLM's ``1/t`` ELBO weighting with the masked count
    in place of its expectation ``t L``. The optimum is ``E[x | z_t]`` either way. Returns ``(B,)``.
    """
    t = torch.rand(x0.shape[0], generator=generator).to(x0.device)
    z_t = mask_tokens(x0, t, net.vocab_size, generator)
    return masked_cross_entropy(net(z_t, t, labels), x0, z_t == net.vocab_size)


@dataclass
class MaskedTeacherConfig:
    data: str = "mnist-binary"
    iters: int = 4000
    batch_size: int = 64
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
        default_net_config(get_dataset(self.data))  # raises for non-token datasets
        for name in ("iters", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema <- decay ema + (1 - decay) net``, parameter by parameter."""
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)


def train_masked_teacher(config: MaskedTeacherConfig, out: str | Path, *, resume: bool = True,
                         progress: bool = True, command: str = "") -> Path:
    """Train a masked-diffusion teacher with EMA and label dropout; write and return the teacher folder.

    Built on ``accelerate`` (CPU, one GPU, or several with ``accelerate launch``). Resumes from
    ``out/train_state`` when it exists and matches the config; all randomness of iteration ``i`` comes
    from a generator seeded by ``(seed, i)``, so a resumed run ends where an uninterrupted one does.
    """
    from accelerate import Accelerator

    out = Path(out)
    ds = get_dataset(config.data)
    net_cfg = net_config_from_dict(config.net) if config.net else default_net_config(ds)
    config.net = io.json_ready(net_cfg)
    accelerator = Accelerator()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_net(net_cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, wall = 0, 0.0

    state_dir = out / "train_state"
    if resume and state_dir.exists():
        st_cfg = io.read_config(state_dir)
        if st_cfg.get("kind") != f"{KIND}-train-state" or st_cfg["config"]["data"] != config.data:
            raise ValueError(f"cannot resume: {state_dir} is not a masked-teacher run on {config.data!r}")
        if st_cfg["config"]["net"] != config.net:
            raise ValueError(f"cannot resume: {state_dir} was trained with another network config")
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
    bar = tqdm(range(start, config.iters), initial=start, total=config.iters, disable=not progress,
               desc=f"masked teacher {config.data}")
    t0 = time.time()
    for it in bar:
        g = iteration_generator(config.seed, it)
        x0, labels = ds.sample(config.batch_size, seed=g)
        drop = torch.rand(config.batch_size, generator=g) < config.label_dropout
        labels = torch.where(drop, torch.full_like(labels, ds.num_classes), labels)
        x0, labels = x0.to(accelerator.device), labels.to(accelerator.device)
        loss = masked_diffusion_loss(net, x0, labels, g).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite teacher loss at iteration {it}; last good checkpoint kept in {out}")
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
            _save(out, config, accelerator.unwrap_model(net), ema, opt, done, wall + time.time() - t0, command)
    accelerator.wait_for_everyone()
    return out


def _save(out: Path, config: MaskedTeacherConfig, net, ema, opt, step: int, wall: float, command: str) -> None:
    opt_tensors, opt_meta = io.flatten_optimizer(opt, "opt")
    state = {**{f"net.{k}": v for k, v in net.state_dict().items()},
             **{f"ema.{k}": v for k, v in ema.state_dict().items()}, **opt_tensors}
    io.save_folder(out / "train_state", {"kind": f"{KIND}-train-state", "config": asdict(config), "step": step,
                                          "wall_time_s": wall, "optimizer": opt_meta}, {"state": state})
    meta = {"kind": KIND, "dataset": config.data, "net": config.net, "iters": step, "wall_time_s": round(wall, 1),
            "seed": config.seed, "command": command, "train": asdict(config)}
    io.save_model_files(out, meta, {"model": ema.state_dict()})


def load_masked_teacher(spec: str | Path, device="cpu") -> nn.Module:
    """``oracle:ring-mix-tokens`` (the exact joint) or a masked-teacher folder; ValueError otherwise.

    A continuous (flow-matching) teacher, oracle or folder, is refused with a one-line error.
    """
    spec = str(spec)
    if spec.startswith("oracle:"):
        name = spec.split(":", 1)[1]
        ds = get_dataset(name)
        if name not in ORACLES:
            hint = (" (it is a continuous dataset: use a flow-matching method)" if ds.kind != "tokens" else "")
            raise ValueError(f"no masked-diffusion oracle for dataset {name!r}{hint}; "
                             f"oracles: {', '.join(ORACLES)}")
        return TokenOracle(ORACLES[name](ds.vocab_size), name).to(device)
    spec = _zoo_path(spec)
    cfg = io.read_config(spec)
    if cfg.get("kind") == "teacher":
        raise ValueError(f"{spec!r} is a continuous (flow-matching) teacher; masked diffusion needs a "
                         f"{KIND} folder (pdmd-lab train-teacher --data mnist-binary) or oracle:ring-mix-tokens")
    if cfg.get("kind") != KIND:
        raise ValueError(f"{spec!r} is not a masked-diffusion teacher folder "
                         f"(its config says kind={cfg.get('kind')!r})")
    net = build_net(cfg["net"])
    io.load_weights(net, io.read_tensors(spec, "model"), spec)
    net.dataset = cfg["dataset"]
    return net.eval().requires_grad_(False).to(device)


def _zoo_path(spec: str) -> str:
    """``zoo:<family>/<model>`` -> the shipped folder; other specs unchanged."""
    if spec.startswith("zoo:"):
        from pdmd_lab.zoo import ASSETS

        return str(ASSETS / spec.split(":", 1)[1])
    return spec


def is_masked_teacher_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a masked-diffusion teacher (``oracle:<token dataset>``, a masked-teacher folder
    or its ``zoo:`` name)."""
    spec = _zoo_path(str(spec))
    if spec.startswith("oracle:"):
        name = spec.split(":", 1)[1]
        return name in DATASETS and DATASETS[name].kind == "tokens"
    try:
        return io.read_config(spec).get("kind") == KIND
    except ValueError:
        return False


def fit_net_to_oracle(oracle: TokenOracle, net: MaskedDenoiser, dataset, *, iters: int = 1500, batch_size: int = 512,
                      lr: float = 2e-3, seed: int = 0, progress: bool = True) -> MaskedDenoiser:
    """Fit a network to an exact oracle, ``KL(oracle(z_t) || net(z_t))`` on masked positions, ``z_t`` from data.

    Oracle teachers have no weights; D-MMD starts its generator and auxiliary from such a fit (10% null
    labels, so the unconditional branch is fitted too). Regressing exact distributions has far less
    variance than the MDLM loss on samples.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    v = net.vocab_size
    for _ in tqdm(range(iters), disable=not progress, desc="fit net to oracle"):
        x0, labels = dataset.sample(batch_size, seed=g)
        drop = torch.rand(batch_size, generator=g) < 0.1
        labels = torch.where(drop, torch.full_like(labels, dataset.num_classes), labels).to(device)
        t = torch.rand(batch_size, generator=g).to(device)
        z_t = mask_tokens(check_tokens(x0, v).to(device), t, v, g)
        with torch.no_grad():
            target = torch.softmax(oracle(z_t, t, labels), -1)
        loss = masked_cross_entropy(net(z_t, t, labels), target, z_t == v).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()

"""Masked-diffusion teachers: MDLM training (accelerate, EMA, label dropout, atomic checkpoints, resume) and loading.

Mirrors :mod:`pdmd_lab.teacher`. A teacher folder holds ``config.json`` (``kind: masked-teacher``) and
``model.safetensors`` (EMA weights); ``train_state/`` (raw weights, optimizer, step) lets training resume.
``load_masked_teacher("oracle:ring-mix-tokens")`` gives the exact two-token oracle instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from pdmd_lab.teacher import train_denoiser

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


def train_masked_teacher(config: MaskedTeacherConfig, out: str | Path, *, resume: bool = True,
                         progress: bool = True, command: str = "") -> Path:
    """Train a masked-diffusion teacher (MDLM loss) with EMA and label dropout; write and return the folder.

    The loop is :func:`pdmd_lab.teacher.train_denoiser`, the continuous teachers' own: ``accelerate`` (CPU,
    one GPU, or several with ``accelerate launch``), atomic checkpoints, exact resume.
    """
    ds = get_dataset(config.data)
    net_cfg = net_config_from_dict(config.net) if config.net else default_net_config(ds)
    config.net = io.json_ready(net_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_net(net_cfg)
    return train_denoiser(config, net, out, kind=KIND, loss_fn=masked_diffusion_loss, resume=resume,
                          progress=progress, command=command)


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
    spec = io.resolve(spec)
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


def is_masked_teacher_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a masked-diffusion teacher (``oracle:<token dataset>``, a masked-teacher folder
    or its ``zoo:`` name)."""
    spec = io.resolve(str(spec))
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

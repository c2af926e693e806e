"""Networks behind one interface: ``v = net(x, t, class_labels)`` with ``t`` in [0, 1].

* :class:`MLPDenoiser`: a time- and class-conditioned MLP for 2D points.
* :class:`UNetDenoiser`: a class-conditional diffusers ``UNet2DModel`` for images; the only place
  where ``t`` becomes diffusers' ``1000 t`` timestep.

``class_labels`` may be None or hold ``num_classes`` (the null class) for the unconditional
prediction that classifier-free guidance needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class MLPConfig:
    type: str = "mlp"
    data_dim: int = 2
    num_classes: int = 1
    hidden: int = 256
    depth: int = 4  # hidden layers
    emb_dim: int = 64  # time and class embedding width


@dataclass
class UNetConfig:
    type: str = "unet"
    sample_size: int = 28
    channels: int = 1
    num_classes: int = 10
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    norm_num_groups: int = 8
    extra: dict = field(default_factory=dict)  # passed to UNet2DModel as is


class Denoiser(nn.Module):
    """Base of every network here: a velocity predictor ``v = net(x, t, class_labels)``."""

    config: MLPConfig | UNetConfig

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _labels(self, class_labels, batch: int, device) -> torch.Tensor:
        if class_labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device)
        return labels.expand(batch) if labels.ndim == 0 else labels

    @staticmethod
    def _times(t, batch: int, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(batch) if t.ndim == 0 else t


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``1000 t`` (the DDPM / diffusers convention), ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class MLPDenoiser(Denoiser):
    """Residual MLP conditioned on time and class (class ``num_classes`` is the null class)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        c = config
        self.time_mlp = nn.Sequential(nn.Linear(c.emb_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.class_emb = nn.Embedding(c.num_classes + 1, c.hidden)
        self.inp = nn.Linear(c.data_dim, c.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.hidden), nn.SiLU(),
                          nn.Linear(c.hidden, c.hidden))
            for _ in range(c.depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.data_dim))

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        b = x.shape[0]
        t = self._times(t, b, x)
        cond = self.time_mlp(timestep_embedding(t, self.config.emb_dim))
        cond = cond + self.class_emb(self._labels(class_labels, b, x.device))  # (B, H)
        h = self.inp(x) + cond  # (B, H)
        for block in self.blocks:
            h = h + block(h + cond)
        return self.out(h)


class UNetDenoiser(Denoiser):
    """Adapter around diffusers ``UNet2DModel``: the one place where ``t`` becomes ``1000 t``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        c = config
        n = len(c.block_out_channels)
        down = ["DownBlock2D"] * n
        up = ["UpBlock2D"] * n
        if c.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=c.sample_size,
            in_channels=c.channels,
            out_channels=c.channels,
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            num_class_embeds=c.num_classes + 1,
            norm_num_groups=c.norm_num_groups,
            attention_head_dim=8,
            **c.extra,
        )

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        b = x.shape[0]
        t = self._times(t, b, x)
        return self.unet(x, 1000 * t, class_labels=self._labels(class_labels, b, x.device)).sample


@dataclass
class NullLabelConfig:
    type: str = "null-label"
    base: dict = field(default_factory=dict)  # the wrapped conditional network's config
    num_classes: int = 1  # one class: every label is sent to the base network as its null class


class NullLabelDenoiser(Denoiser):
    """A class-conditional network run with its null class only: an unconditional Denoiser.

    A teacher trained with label dropout is, with the null label and CFG off, an unconditional
    teacher (``mnist-uncond``). Whatever ``class_labels`` it gets, the base network sees its null
    class; it reports one class. Its weights are the base network's under ``net.``.
    """

    def __init__(self, config: NullLabelConfig):
        super().__init__()
        self.config = config
        self.net = build_net(config.base)

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        return self.net(x, t, None)


NET_CONFIGS = {"mlp": MLPConfig, "unet": UNetConfig, "null-label": NullLabelConfig}
NETS = {"mlp": MLPDenoiser, "unet": UNetDenoiser, "null-label": NullLabelDenoiser}


def net_config_from_dict(d: dict) -> MLPConfig | UNetConfig:
    """Rebuild a network config from its JSON form; unknown types or fields raise ValueError."""
    kind = d.get("type")
    if kind not in NET_CONFIGS:
        from pdmd_lab.distill.methods import load_plugins

        load_plugins()  # optional parts register their network types (pdmd_lab.discrete: token-mlp, token-unet)
    if kind not in NET_CONFIGS:
        raise ValueError(f"unknown network type {kind!r}; choose one of: {', '.join(NET_CONFIGS)}")
    cls = NET_CONFIGS[kind]
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"network config has unknown fields {sorted(unknown)} for type {kind!r}")
    d = dict(d)
    if "block_out_channels" in d:
        d["block_out_channels"] = tuple(d["block_out_channels"])
    return cls(**d)


def build_net(config: MLPConfig | UNetConfig | dict) -> Denoiser:
    """Instantiate the network a config describes."""
    if isinstance(config, dict):
        config = net_config_from_dict(config)
    return NETS[config.type](config)


def default_net_config(dataset) -> MLPConfig | UNetConfig:
    """The network the kit uses for a dataset, by the shape of one sample: an MLP for vectors ``(D,)``, a small
    UNet for images ``(C, H, W)`` (a family picks it through :meth:`~pdmd_lab.families.Family.default_net_config`)."""
    if len(dataset.shape) == 1:
        return MLPConfig(data_dim=dataset.shape[0], num_classes=dataset.num_classes)
    if len(dataset.shape) != 3:
        raise ValueError(f"no default network for samples of shape {tuple(dataset.shape)} (dataset "
                         f"{dataset.name!r}): give a network config")
    c, h, _ = dataset.shape
    if h <= 8:
        return UNetConfig(sample_size=h, channels=c, num_classes=dataset.num_classes,
                          block_out_channels=(32, 64), attention=False)
    return UNetConfig(sample_size=h, channels=c, num_classes=dataset.num_classes)


def config_dict(config) -> dict:
    return asdict(config)


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())

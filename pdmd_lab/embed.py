"""Feature extractors and 2D projections for the diversity metrics and figures.

* :class:`Classifier`: a small CNN trained on an image dataset (MNIST 28x28, digits 8x8); its
  penultimate layer gives the features that :mod:`pdmd_lab.metrics` compares (FID-style, PRDC,
  Vendi), in the spirit of the Inception features of FID (Heusel et al. 2017) at toy scale.
* :func:`embed`: features of images through a classifier, or 2D points as they are.
* :func:`project`: PCA or t-SNE to 2D for scatter plots.

A classifier folder holds ``config.json`` (``kind: classifier``, the dataset, the architecture,
held-out accuracy, iterations, wall time) and ``model.safetensors``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdmd_lab import io
from pdmd_lab.data import get_dataset


def _split(ds, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of an image dataset's ``"train"`` or ``"heldout"`` split."""
    return ds._sampler.train() if which == "train" else ds._sampler.heldout()


# Network -------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """Conv blocks (conv 3x3, GroupNorm, ReLU, 2x2 max-pool), then a ``feature_dim`` layer and a linear head.

    GroupNorm instead of BatchNorm: features do not depend on the batch or on train / eval mode.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 channels: tuple[int, ...] = (32, 64), feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        self.arch = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                     "channels": list(channels), "feature_dim": feature_dim, "dropout": dropout}
        self.dataset = ""
        layers, c_in, size = [], in_channels, image_size
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        if size < 1:
            raise ValueError(f"{len(channels)} pooling blocks are too many for {image_size}-pixel images")
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, C, H, W) -> (B, feature_dim)``."""
        return self.proj(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted labels ``(B,)``, in batches."""
        return torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


# Training ------------------------------------------------------------------------------------

@dataclass
class ClassifierConfig:
    data: str = "mnist"
    iters: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100  # linear warm-up iterations, then cosine decay to 0
    max_shift: int | None = None  # random shifts up to this many pixels; None: size // 14 (MNIST 2, digits 1)
    seed: int = 0
    channels: tuple[int, ...] = (32, 64)  # conv widths, one 2x2 max-pool per block
    feature_dim: int = 128
    dropout: float = 0.3

    def __post_init__(self):
        if get_dataset(self.data).kind != "image":
            raise ValueError(f"a classifier needs an image dataset; {self.data!r} is 2D (use the points)")
        for name in ("iters", "batch_size", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_shift is None:
            self.max_shift = max(1, get_dataset(self.data).shape[-1] // 14)
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.channels = tuple(self.channels)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y: pad with -1 (background), crop back."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    crops = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return crops.permute(0, 3, 1, 2)


def build_classifier(config: ClassifierConfig) -> Classifier:
    """The untrained classifier a config describes, for its dataset's image shape and classes."""
    ds = get_dataset(config.data)
    c, h, _ = ds.shape
    return Classifier(c, h, ds.num_classes, config.channels, config.feature_dim, config.dropout)


def train_classifier(config: ClassifierConfig, out: str | Path, progress: bool = True) -> Path:
    """Train a classifier with AdamW and random shifts; write and return its folder.

    Seeded: initialisation, batches, shifts and dropout all come from ``config.seed`` (the global
    torch RNG is restored afterwards). The folder's config records the held-out accuracy.
    """
    ds = get_dataset(config.data)
    x_train, y_train = _split(ds, "train")
    x_held, y_held = _split(ds, "heldout")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        g = torch.Generator().manual_seed(config.seed)
        model = build_classifier(config)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, config.warmup))
                                                  * 0.5 * (1 + math.cos(math.pi * i / config.iters)))
        bar = tqdm(range(config.iters), disable=not progress, desc=f"classifier {config.data}")
        t0 = time.time()
        model.train()
        for _ in bar:
            idx = torch.randint(0, len(x_train), (config.batch_size,), generator=g)
            x = random_shift(x_train[idx], config.max_shift, g)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        wall = time.time() - t0
    model.eval()
    accuracy = float((model.predict(x_held) == y_held).double().mean())
    meta = {"kind": "classifier", "dataset": config.data, "net": model.arch, "heldout_accuracy": accuracy,
            "heldout_size": len(y_held), "iters": config.iters, "wall_time_s": round(wall, 1),
            "train": asdict(config)}
    return io.save_folder(out, meta, {"model": model.state_dict()})


def load_classifier(path: str | Path, device="cpu") -> Classifier:
    """A trained classifier in eval mode; missing, corrupt or non-classifier folders raise ValueError."""
    return io.load_folder(path, device=device, kinds=("classifier",))


def _classifier_from_folder(path, cfg: dict, device) -> Classifier:
    try:
        model = Classifier(**cfg["net"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"classifier config in {str(path)!r} has a bad 'net' entry: {e}") from None
    io.load_weights(model, io.read_tensors(path, "model"), str(path))
    model.dataset = cfg.get("dataset", "")
    return model.eval().requires_grad_(False).to(device)


io.register_kind("classifier", _classifier_from_folder)


# Features and projections ---------------------------------------------------------------------

@torch.no_grad()
def embed(classifier: Classifier | None, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Features for the metrics: ``(B, C, H, W)`` images -> ``(B, F)`` through ``classifier``;
    ``(B, D)`` points (classifier None) are returned as they are."""
    x = torch.as_tensor(x)
    if classifier is None:
        if x.ndim != 2:
            raise ValueError(f"points must have shape (N, D), got {tuple(x.shape)}; images need a classifier")
        return x.float()
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
    param = next(classifier.parameters())
    x = x.to(param.device, param.dtype)
    return torch.cat([classifier.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).cpu()


PROJECTIONS = ("pca", "tsne")


def project(features, method: str = "pca", seed: int = 0, dim: int = 2,
            perplexity: float = 30.0) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, dim)`` with scikit-learn PCA or t-SNE.

    t-SNE: van der Maaten & Hinton 2008; ``perplexity`` is clipped to ``N - 1`` for small sets.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of: {', '.join(PROJECTIONS)}")
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    f = f.astype(np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {f.shape}")
    if dim < 1 or dim > min(f.shape):
        raise ValueError(f"dim must be in [1, {min(f.shape)}] for features of shape {f.shape}, got {dim}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=dim, random_state=seed).fit_transform(f)
    from sklearn.manifold import TSNE

    return TSNE(n_components=dim, perplexity=min(perplexity, len(f) - 1), init="pca",
                random_state=seed).fit_transform(f)

"""``pdmd-lab bench``: sampling speed of the shipped models and the training-memory argument of Phased DMD.

Apart from :mod:`pdmd_lab.evaluate` so that measuring quality never imports training code; the memory
benchmark times one generator iteration, so it uses the rollouts and losses of :mod:`pdmd_lab.distill`.
Backbones add their own rows (LoRA experts on a diffusers transformer) through :data:`EXTRA_BENCHES`.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pdmd_lab import zoo
from pdmd_lab.data import get_dataset
from pdmd_lab.evaluate import _batch_noise, _fmt, _labels, _write_outputs

EXTRA_BENCHES: dict = {}  # name -> fn(quick) -> (data, markdown); registered by optional parts, kept in result["extra"]

def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))


class _SavedBytes:
    """Bytes of tensors autograd saves for backward (distinct storages), via ``saved_tensors_hooks``."""

    def __init__(self):
        self.seen: set = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t):
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _train_iteration(net, n_steps: int, batch: int, mode: str, seed: int = 0) -> tuple[int, float]:
    """One generator iteration (rollout + surrogate loss backward): (saved bytes, wall ms)."""
    from pdmd_lab import flow
    from pdmd_lab.distill import Draw, losses, rollouts

    g = torch.Generator().manual_seed(seed)
    shape = (net.config.channels, net.config.sample_size, net.config.sample_size)
    z = torch.randn((batch, *shape), generator=g)
    labels = torch.randint(0, net.num_classes, (batch,), generator=g)
    ts = [float(t) for t in flow.step_times(n_steps)]
    counter = _SavedBytes()
    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with counter.hooks():
        if mode == "phased":
            bounds = [float(b) for b in flow.phase_boundaries(n_steps, n_steps)]
            draw = Draw(g, batch)
            x = rollouts.phased([net] * n_steps, n_steps - 1, z, labels, ts, bounds, draw, grad=True).x
        else:
            x = z
            for i in range(n_steps):
                x = x + (ts[i + 1] - ts[i]) * net(x, ts[i], labels)
        loss = losses.surrogate_loss(x, torch.randn(x.shape, generator=g)).mean()
    loss.backward()
    ms = (time.perf_counter() - t0) * 1000
    net.zero_grad(set_to_none=True)
    return counter.bytes, ms


def bench(quick: bool = False, out: Path | None = None, *, progress: bool = False) -> dict:
    """Sampling speedup of the shipped students and the training-memory argument of Phased DMD.

    (a) Median time (3 repeats after a warm-up) of sampling one batch with the family's teacher at 50
    steps with CFG and each shipped student (mnist when its teacher is shipped: batch 64, quick 16;
    else ring-mix, batch 4096). (b) For N steps: bytes of activations autograd saves, and wall time, of
    one generator iteration for Phased DMD's last phase (N-1 steps without grad, one with) versus
    backprop through all N Euler steps, both followed by the surrogate DMD loss backward, on the mnist
    teacher UNet (batch 16, N in 1, 2, 4, 8; quick: batch 4, N in 1, 2, 4).
    """
    from pdmd_lab.nets import UNetConfig, build_net

    family = "mnist" if (zoo.ASSETS / "mnist" / "teacher" / "config.json").exists() else "ring-mix"
    batch = (16 if quick else 64) if family == "mnist" else 4096
    ds = get_dataset(family)
    labels = _labels(batch, ds.num_classes)
    noise = _batch_noise(ds.shape, 0, 0, batch)
    teacher = zoo.load(f"{family}/teacher", steps=50)
    models = {f"{family}/teacher@50": teacher}
    for name in zoo.list_models():
        if name.startswith(f"{family}/") and name not in (f"{family}/teacher", f"{family}/classifier"):
            models[name] = zoo.load(name)
    sampling = {}
    for name, m in tqdm(models.items(), desc="sampling bench", disable=not progress):
        ms = _timed(lambda m=m: m.sample(labels, noise=noise))
        sampling[name] = {"nfe": int(m.nfe), "ms": ms}
    t_ms = sampling[f"{family}/teacher@50"]["ms"]
    for v in sampling.values():
        v["speedup"] = t_ms / v["ms"]

    net = copy.deepcopy(zoo.load("mnist/teacher").model) if family == "mnist" else build_net(UNetConfig())
    net.train().requires_grad_(True)
    mem_batch, ns = (4, (1, 2, 4)) if quick else (16, (1, 2, 4, 8))
    memory = []
    for n_steps in tqdm(ns, desc="memory bench", disable=not progress):
        row = {"N": n_steps}
        for mode in ("phased", "full"):
            _train_iteration(net, n_steps, mem_batch, mode)  # warm-up
            b, ms = _train_iteration(net, n_steps, mem_batch, mode)
            row[f"{mode}_saved_mb"] = b / 2**20
            row[f"{mode}_ms"] = ms
        row["memory_ratio"] = row["full_saved_mb"] / row["phased_saved_mb"]
        row["time_ratio"] = row["full_ms"] / row["phased_ms"]
        memory.append(row)
    result = {"quick": quick, "family": family, "sampling_batch": batch, "sampling": sampling,
              "memory_batch": mem_batch, "memory_net": "mnist teacher UNet" if family == "mnist" else "fresh UNet",
              "memory": memory, "threads": torch.get_num_threads()}
    from pdmd_lab.distill.methods import load_plugins

    load_plugins()  # optional parts register their benches (pdmd_lab.backbones: memory on a tiny SD3)
    result["extra"] = {}
    for name, fn in EXTRA_BENCHES.items():
        data, markdown = fn(quick)
        result["extra"][name] = {"data": data, "markdown": markdown}
    return _write_outputs(result, out, "bench", bench_markdown)


def bench_markdown(result: dict) -> str:
    lines = [f"### Sampling ({result['family']}, batch {result['sampling_batch']}, median of 3 after a warm-up)",
             "", "| model | NFE | ms / batch | speedup |", "|---|---|---|---|"]
    for name, r in result["sampling"].items():
        lines.append(f"| {name} | {r['nfe']} | {_fmt(r['ms'])} | {_fmt(r['speedup'])} |")
    lines += ["", f"### One generator iteration ({result['memory_net']}, batch {result['memory_batch']}): "
              "activations saved for backward", "",
              "| N | Phased DMD (MB) | full backprop (MB) | memory ratio | Phased DMD (ms) | full backprop (ms) |",
              "|---|---|---|---|---|---|"]
    for r in result["memory"]:
        lines.append(f"| {r['N']} | {_fmt(r['phased_saved_mb'])} | {_fmt(r['full_saved_mb'])} | "
                     f"{_fmt(r['memory_ratio'])} | {_fmt(r['phased_ms'])} | {_fmt(r['full_ms'])} |")
    extras = [e["markdown"] for e in result.get("extra", {}).values()]
    return "\n".join(lines + [""] + extras) + "\n"

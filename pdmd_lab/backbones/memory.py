"""Peak memory of one Phased DMD generator step on a real backbone: LoRA experts vs full weights vs backprop.

The step is the kit's own :meth:`~pdmd_lab.distill.trainer.Distiller.generator_step` (rollout, DMD
gradient with the CFG teacher and the fake score, surrogate loss backward, AdamW step), in the last
phase of an N-step, K = N phase student, on a tiny 8-layer ``SD3Transformer2DModel``:

* ``lora``: K expert adapters and a fake-score adapter on one frozen base (this kit's default);
* ``full``: K full-weight experts and a full-weight fake score, copies of the teacher;
* ``backprop``: one full-weight generator with gradients through all N Euler steps (no phases, no
  truncation), the alternative Phased DMD's progressive training avoids.

On a GPU the peak is ``torch.cuda.max_memory_allocated`` over the measured step (after a warm-up
critic and generator step, so optimizer states exist), less what was allocated before the run was
built. On CPU it is an estimate: every resident tensor (weights, gradients, optimizer states of both
players; distinct storages) plus the tensors autograd saves for backward during the step
(``saved_tensors_hooks``); transient buffers are not counted.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import torch

MODES = ("lora", "full", "backprop")


def _unrolled_method(steps: int):
    """A DMD method whose generator unrolls all ``steps`` Euler steps with gradients (the costly baseline)."""
    from pdmd_lab.distill import rollouts
    from pdmd_lab.distill.methods import DMDFamily

    class Unrolled(DMDFamily):
        name = "unrolled"

        def rollout(self, run, z, labels, draw, *, grad):
            ts = self.step_times()
            x = z
            with torch.set_grad_enabled(grad):
                for i in range(len(ts) - 1):
                    x = x + (ts[i + 1] - ts[i]) * run.generator(x, ts[i], labels)
            return rollouts.Rollout(x, 0.0, exit_step=len(ts) - 1)

    return Unrolled(steps)


class _Resident:
    """Distinct storages of a set of tensors, in bytes."""

    def __init__(self):
        self.seen: set = set()
        self.bytes = 0

    def add(self, t: torch.Tensor | None) -> None:
        if t is None:
            return
        s = t.untyped_storage()
        if s.data_ptr() not in self.seen:
            self.seen.add(s.data_ptr())
            self.bytes += s.nbytes()


def _resident_bytes(modules, optimizers, grads: bool = True) -> tuple[int, set]:
    r = _Resident()
    for m in modules:
        for p in m.parameters():
            r.add(p)
            if grads:
                r.add(p.grad)
        for b in m.buffers():
            r.add(b)
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    r.add(v)
    return r.bytes, r.seen


def step_memory(mode: str, steps: int, *, num_layers: int = 8, batch: int = 2, latent=(4, 32, 32),
                lora_rank: int = 4, cfg: float = 3.0, folder=None, seed: int = 0) -> dict:
    """Peak memory (MB) of one generator step of ``mode`` for an N = ``steps`` student (K = N phases).

    ``folder``: a saved ``SD3Transformer2DModel`` to measure instead of the tiny 8-layer one.
    """
    from pdmd_lab.backbones.adapters import load_backbone
    from pdmd_lab.backbones.lora import LoRAConfig, LoRAExperts
    from pdmd_lab.backbones.tiny import random_prompts, save_tiny
    from pdmd_lab.distill import DistillConfig
    from pdmd_lab.distill.methods import get_method
    from pdmd_lab.distill.trainer import Distiller, GaussianPrior

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gc.collect()  # what an earlier measurement left behind is not this one's
    baseline = 0
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder) if folder else save_tiny("sd3", Path(tmp) / "sd3", seed=seed, num_layers=num_layers)
        prompts = random_prompts(path, seed=seed)
        backbone = load_backbone(path, prompts, latent_shape=latent, device="cuda" if torch.cuda.is_available()
                                 else "cpu")
    if mode == "lora":
        lora = LoRAExperts(backbone, 0, LoRAConfig(rank=lora_rank), seed=seed)
        teacher = init = lora.teacher
    else:
        teacher = init = backbone
    if mode == "backprop":
        method = _unrolled_method(steps)
        config = DistillConfig(teacher="diffusers:tiny", method="dmd2-sgts", steps=steps, iters=1, batch_size=batch,
                               cfg=cfg, seed=seed)
    else:
        method = get_method("phased-dmd").from_options(steps, 1.0, {"phases": steps})
        config = DistillConfig(teacher="diffusers:tiny", method="phased-dmd", steps=steps, iters=steps,
                               options={"phases": steps}, batch_size=batch, cfg=cfg, seed=seed)
    d = Distiller(teacher, init, GaussianPrior(backbone.shape, prompts.num_prompts), method, config, progress=False)
    if method.num_phases > 1:
        d._start_phase(method.num_phases - 1)  # the last phase: N - 1 frozen steps before the trained one
    cuda = d.device.type == "cuda"
    d.critic_step(d._draw(0, 1))  # warm-up: optimizer states exist, as in training
    d.generator_step(d._draw(0, 0))
    modules = [backbone, *d.student.experts, d.critic_module]  # the base holds the LoRA tensors too
    optimizers = [d.opt_generator, d.opt_critic]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        d.generator_step(d._draw(1, 0))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
        saved = None
    else:
        resident, seen = _resident_bytes(modules, [getattr(o, "optimizer", o) for o in optimizers])
        counter = _Resident()
        counter.seen = set(seen)  # weights saved for backward are counted once, as weights

        def pack(t):
            counter.add(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            d.generator_step(d._draw(1, 0))
        saved = counter.bytes
        peak = resident + saved
    weights, _ = _resident_bytes(modules, [], grads=False)
    trainable = sum(p.numel() for p in d.student.experts[d.phase].parameters())
    return {"mode": mode, "N": steps, "K": method.num_phases, "peak_mb": peak / 2**20,
            "weights_mb": weights / 2**20, "saved_mb": None if saved is None else saved / 2**20,
            "trainable_params": trainable, "measured_by": "cuda max_memory_allocated" if cuda else
            "resident tensors + saved for backward (CPU estimate)"}


def memory_table(steps=(1, 2, 4, 8), modes=MODES, **kwargs) -> list[dict]:
    """One row per N: the peak MB of each mode (see :func:`step_memory`)."""
    rows = []
    for n in steps:
        row = {"N": n, "K": n}
        for mode in modes:
            r = step_memory(mode, n, **kwargs)
            row[f"{mode}_mb"] = r["peak_mb"]
            row[f"{mode}_trainable"] = r["trainable_params"]
            row[f"{mode}_weights_mb"] = r["weights_mb"]
            row["measured_by"] = r["measured_by"]
        rows.append(row)
    return rows


def memory_markdown(rows: list[dict], title: str = "") -> str:
    modes = [m for m in MODES if f"{m}_mb" in rows[0]]
    head = {"lora": "LoRA experts (MB)", "full": "full-weight experts (MB)", "backprop": "backprop all N steps (MB)"}
    lines = [title, ""] if title else []
    lines += ["| N = K | " + " | ".join(head[m] for m in modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['N']} | " + " | ".join(f"{r[f'{m}_mb']:.2f}" for m in modes) + " |")
    lines += ["", f"Measured by: {rows[0]['measured_by']}."]
    return "\n".join(lines) + "\n"


def bench_backbone_memory(quick: bool = False) -> tuple[list[dict], str]:
    """The ``pdmd-lab bench`` entry: tiny 8-layer SD3, batch 2, latents 4x32x32 (quick: 4x8x8, N in 1, 2)."""
    steps, latent = ((1, 2), (4, 8, 8)) if quick else ((1, 2, 4, 8), (4, 32, 32))
    rows = memory_table(steps, latent=latent)
    title = (f"### One Phased DMD generator step on a tiny 8-layer SD3Transformer2DModel "
             f"(batch 2, latents {'x'.join(map(str, latent))}, LoRA rank 4, K = N)")
    return rows, memory_markdown(rows, title)

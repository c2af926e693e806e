"""Where collapse comes from: the distribution of each exit step of a multi-step student.

A DMD2-SGTS student is trained with one fake score on the mix of all exit steps (the rollout draws
the exit ``j`` at random and judges step j's ``x0`` prediction), so nothing asks any single exit to
match the teacher: exits can specialise (one on each class's own modes, later ones on shared modes)
while their mix matches. The final output is only the last exit. Phased DMD trains expert k
against the teacher at its own phase end, so each phase's output is judged on its own.

:func:`per_exit_outputs` runs a student once and keeps, for every step j, its ``x0`` prediction
(what SGTS's exit j outputs) and the state after the step (what a phase end hands on).
:func:`exit_mode_shares` turns each exit's ``x0`` predictions into per-class mode shares on a
Gaussian-mixture family, split into the class's own modes and modes shared with other classes.
"""

from __future__ import annotations

import numpy as np
import torch

from pdmd_lab import metrics
from pdmd_lab.data import get_dataset


@torch.no_grad()
def per_exit_outputs(student, labels, seed: int = 0) -> dict:
    """``{"x0": [x0_hat of step 1..N], "states": [x after step 1..N], "t": [t_j], "expert": [k_j]}``."""
    from pdmd_lab.sampling import get_sampler

    spec = get_sampler(student.sampler)
    labels = torch.as_tensor(labels, dtype=torch.long)
    x = spec.initial(student.shape, len(labels), torch.Generator().manual_seed(int(seed)), "cpu")
    out: dict = {"x0": [], "states": [], "t": [], "expert": []}

    def keep(d):
        out["x0"].append(d["x0_hat"])
        out["states"].append(d["x_next"])
        out["t"].append(d["t"])
        out["expert"].append(student.expert_index(d["t"]))

    spec.run(student, x, student.step_times, class_labels=labels, generator=torch.Generator().manual_seed(seed + 1),
             callback=keep)
    return out


def own_and_shared_modes(gmm) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(C, K)`` tables: mode k belongs to class c alone / is shared with another class."""
    has = (gmm.weights > 0).numpy()
    shared = has & (has.sum(0, keepdims=True) > 1)
    return has & ~shared, shared


def exit_mode_shares(family: str, outputs: dict, labels, reference=None) -> list[dict]:
    """Per exit step: mode coverage, KL to the reference histogram, and the share of each class's samples
    on its own modes vs on shared modes (means over classes)."""
    gmm = get_dataset(family).gmm
    if gmm is None:
        raise ValueError(f"{family!r} is not a Gaussian-mixture family: per-exit mode shares need one")
    own, shared = own_and_shared_modes(gmm)
    ref_hist = None if reference is None else metrics.mode_histogram(gmm, reference, labels)
    rows = []
    for j, x0 in enumerate(outputs["x0"]):
        hist = metrics.mode_histogram(gmm, x0, labels)  # (C, K) shares
        cov = metrics.mode_coverage(gmm, x0, labels, reference_weights=ref_hist)
        rows.append({"exit": j + 1, "t": float(outputs["t"][j]), "expert": int(outputs["expert"][j]) + 1,
                     "own_share": float((hist * own).sum(1).mean()),
                     "shared_share": float((hist * shared).sum(1).mean()),
                     "modes_covered": cov["modes_covered"], "modes_expected": cov["modes_expected"],
                     "mode_kl": cov["kl"]})
    return rows


def per_exit_figure(student, family: str, n: int = 2000, seed: int = 0, title: str = ""):
    """One panel per exit step: its ``x0`` predictions by class over the modes, with own/shared shares."""
    from pdmd_lab import viz

    ds = get_dataset(family)
    labels = torch.arange(n) % ds.num_classes
    out = per_exit_outputs(student, labels, seed)
    teacher_x = None
    if ds.gmm is not None:
        from pdmd_lab import zoo

        teacher_x = zoo.load(f"{family}/teacher", steps=50).sample(labels, seed=seed + 10_000)
    rows = exit_mode_shares(family, out, labels, teacher_x) if ds.gmm is not None else []
    panels = {}
    for j, x0 in enumerate(out["x0"]):
        r = rows[j] if rows else {}
        name = (f"exit {j + 1} (t={out['t'][j]:.2f}, expert {out['expert'][j] + 1})"
                + (f"\nown {r['own_share']:.2f} · shared {r['shared_share']:.2f} · KL {r['mode_kl']:.2f}" if r else ""))
        panels[name] = (x0, labels)
    if teacher_x is not None:
        panels["teacher, 50 steps"] = (teacher_x, labels)
    fig = viz.scatter_figure(panels, ds.gmm, title=title or f"{student.describe()}: x0 at every exit step")
    return fig, rows

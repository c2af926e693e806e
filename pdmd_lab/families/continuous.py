"""What the flow-matching families (points, images) share: Gaussian prior, Euler / re-noise samplers,
flow-matching teachers, and the evaluation of ``pdmd-lab evaluate`` (same labels and noise for every model,
the teacher at 50, 4 and 1 steps added, a reference set sampled again with other noise).

A subclass says how samples become features (:meth:`ContinuousFamily.features`), which fidelity numbers
it reports (:meth:`ContinuousFamily.fidelity`) and how diversity is measured
(:meth:`ContinuousFamily.diversity_of`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pdmd_lab import io, metrics
from pdmd_lab.families.base import Family
from pdmd_lab.progress import heartbeat

PRDC_K = 5
TEACHER_ROWS = (50, 4, 1)  # teacher step counts always evaluated
REFERENCE_SEED_OFFSET = 1_000_003  # the reference set uses other noise than the rows (its own row is the floor)
FLOOR_KEYS = ("frechet_distance", "energy_distance", "precision", "recall", "density", "coverage")


def cycling_labels(n: int, num_classes: int) -> torch.Tensor:
    """``0, 1, ..., C - 1, 0, 1, ...``: the labels every evaluated model is asked for."""
    return torch.arange(n) % num_classes


def batch_noise(shape, seed: int, b: int, batch: int) -> torch.Tensor:
    """The fixed noise of batch ``b`` (seeded by ``seed`` and ``b``): every model gets the same."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + b)
    return torch.randn((batch, *shape), generator=g)


@torch.no_grad()
def sample_all(model, labels: torch.Tensor, seed: int, batch_size: int) -> tuple[torch.Tensor, float]:
    """All samples for ``labels`` in batches with fixed noise; returns (samples, median ms per batch)."""
    out, times = [], []
    for b, i in enumerate(range(0, len(labels), batch_size)):
        lab = labels[i:i + batch_size]
        z = batch_noise(model.shape, seed, b, len(lab))
        t0 = time.perf_counter()
        x = model.sample(lab, seed=seed + b, noise=z)
        times.append((time.perf_counter() - t0) * 1000)
        out.append(x.detach().cpu().float())
    return torch.cat(out), float(statistics.median(times))


def row_name(name: str, model) -> str:
    """A table row's name: teachers always carry their step count (``mnist/teacher@50``)."""
    base = str(name).rsplit("@", 1)[0] if "@" in str(name) else str(name)
    return f"{base}@{model.num_steps}" if hasattr(model, "with_steps") else base


def mean_per_class(fn, x, labels, **kw) -> float:
    vals = metrics.per_class(fn, x, labels, **kw)
    return float(np.mean(list(vals.values())))


class ContinuousFamily(Family):
    """Flow-matching data: Gaussian noise in, velocity networks, Euler or DMD2's re-noising sampler."""

    samplers = ("euler", "renoise")
    teacher_kind = "teacher"
    model_kinds = ("teacher", "student")
    teacher_defaults: dict = {"batch_size": 256, "lr": 1e-3}  # teacher training, when not given

    # Oracle and teachers --------------------------------------------------------------------------

    def oracle(self, dataset):
        """The exact velocity of a Gaussian-mixture dataset (:class:`~pdmd_lab.teacher.OracleTeacher`), or None."""
        from pdmd_lab.teacher import OracleTeacher

        ds = self.dataset(dataset)
        return OracleTeacher(ds.gmm, ds.name) if ds.gmm is not None else None

    def has_oracle(self, dataset) -> bool:
        return self.dataset(dataset).gmm is not None

    def default_net_config(self, dataset):
        from pdmd_lab.nets import default_net_config

        return default_net_config(self.dataset(dataset))

    def teacher_config(self, data, **fields):
        from pdmd_lab.teacher import TeacherConfig

        self.dataset(data)
        given = {k: v for k, v in fields.items() if v is not None}
        return TeacherConfig(data=data, **{**self.teacher_defaults, **given})

    def train_teacher(self, config, out, *, resume: bool = True, progress: bool = True, command: str = ""):
        from pdmd_lab.teacher import train_teacher

        return train_teacher(config, out, resume=resume, progress=progress, command=command)

    def teacher_sampler(self, spec: str, *, steps: int | None = None, cfg: float | None = None, name: str = ""):
        from pdmd_lab.student import TeacherSampler
        from pdmd_lab.teacher import load_teacher

        teacher = load_teacher(spec)
        ds = self.dataset(teacher.dataset)
        return TeacherSampler(teacher, steps=steps or self.default_teacher_steps,
                              cfg=self.teacher_cfg(ds) if cfg is None else cfg, dataset=ds.name, shape=ds.shape,
                              meta={"name": name or str(spec)})

    # Metrics --------------------------------------------------------------------------------------

    def classifier(self, dataset):
        """The shipped feature classifier of ``dataset`` (``assets/models/<dataset>/classifier``), or None."""
        return None

    def features(self, dataset, x: torch.Tensor, classifier=None) -> torch.Tensor:
        """Features ``(n, d)`` that fidelity and diversity are computed on (default: flattened samples)."""
        return torch.as_tensor(x).float().flatten(1)

    def diversity_of(self, dataset, feats: torch.Tensor, labels: torch.Tensor) -> dict:
        """Diversity numbers of one sample set, per class then averaged: ``{metric: value}``."""
        raise NotImplementedError

    def fidelity(self, dataset, x: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, ref_x: torch.Tensor,
                 ref_feats: torch.Tensor, *, classifier=None, reference_state=None) -> dict:
        """Fidelity numbers of one sample set against the reference set (distances, modes, accuracy)."""
        raise NotImplementedError

    def reference_state(self, dataset, ref_x: torch.Tensor, labels: torch.Tensor):
        """Anything computed once from the reference set for :meth:`fidelity` (the mode histogram)."""
        return None

    def score(self, dataset, samples_by_name: dict, labels, reference_name: str, *, classifier=None,
              k: int = PRDC_K, features: dict | None = None) -> dict:
        """Score sample sets of one dataset against the reference set ``samples_by_name[reference_name]``.

        ``labels`` are the classes every set was asked for (same for all). Returns ``{name: {metric: value}}``;
        the reference's own entry compares it with itself. ``features``: ``{name: self.features(...)}`` of some
        sets computed already (the app's embedding), not computed again.
        """
        features = features or {}
        ds = self.dataset(dataset)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if reference_name not in samples_by_name:
            raise ValueError(f"reference {reference_name!r} is not among the sample sets "
                             f"({', '.join(samples_by_name)})")
        n = len(labels)
        for name, x in samples_by_name.items():
            if len(x) != n:
                raise ValueError(f"samples of {name!r}: {len(x)} samples for {n} labels")
        ref_x = torch.as_tensor(samples_by_name[reference_name]).float()
        ref_f = features[reference_name] if reference_name in features else self.features(ds, ref_x, classifier)
        ref_div = self.diversity_of(ds, ref_f, labels)
        state = self.reference_state(ds, ref_x, labels)
        out = {}
        for name, x in samples_by_name.items():
            x = torch.as_tensor(x).float()
            f = (ref_f if name == reference_name else features[name] if name in features
                 else self.features(ds, x, classifier))
            row = self.fidelity(ds, x, f, labels, ref_x, ref_f, classifier=classifier, reference_state=state)
            row.update(metrics.prdc(ref_f, f, k=k))
            for key, v in self.diversity_of(ds, f, labels).items():
                row[key] = v
                row[f"{key}_ratio"] = v / ref_div[key] if ref_div[key] != 0 else float("nan")
            out[name] = row
        return out

    # Evaluation -----------------------------------------------------------------------------------

    def evaluate(self, models: dict, *, n: int, seed: int = 0, batch_size: int | None = None,
                 reference: str | None = None, load: Callable, progress: bool = True) -> dict:
        """The teacher at 50, 4 and 1 Euler steps joins ``models``; ``reference`` (default the teacher at 50
        steps) is sampled a second time with other noise as the reference set, so its own row is the
        teacher-vs-teacher floor. ``load(name)`` loads a model by zoo name or folder."""
        batch_size = batch_size or 250
        family = {getattr(m, "dataset", "") for m in models.values()}.pop()
        ds = self.dataset(family)
        teacher_name = f"{family}/teacher"
        try:
            teacher = load(teacher_name, steps=50)
        except ValueError:
            raise ValueError(f"family {family!r} has no shipped teacher ({teacher_name!r})") from None
        for s in TEACHER_ROWS:
            models.setdefault(f"{teacher_name}@{s}", teacher.with_steps(s))
        if reference is None:
            ref_name, ref_model = f"{teacher_name}@50", models[f"{teacher_name}@50"]
        else:
            ref_model = load(reference)
            ref_name = row_name(reference, ref_model)
            if ref_model.dataset != family:
                raise ValueError(f"reference {ref_name!r} is of family {ref_model.dataset!r}, not {family!r}")
            ref_model = models.setdefault(ref_name, ref_model)
        if n < 2 * ds.num_classes or n < PRDC_K + 1:
            raise ValueError(f"n={n} is too small: need n >= {max(2 * ds.num_classes, PRDC_K + 1)} "
                             f"(2 samples per class for {ds.num_classes} classes, {PRDC_K + 1} for PRDC)")
        labels = cycling_labels(n, ds.num_classes)
        samples, timing = {}, {}
        ref_key = "__reference_set__"
        jobs = [(ref_key, ref_model, seed + REFERENCE_SEED_OFFSET), *[(k, m, seed) for k, m in models.items()]]
        bar = tqdm(jobs, desc="sampling", disable=not progress)
        with heartbeat(bar, enabled=progress):  # a teacher at 50 steps takes a while: the bar's clock moves
            for key, model, s in bar:
                samples[key], timing[key] = sample_all(model, labels, s, batch_size)
        scores = self.score(family, samples, labels, ref_key, classifier=self.classifier(ds))
        rows = {}
        ref_ms = timing[ref_name]
        for key, model in models.items():
            rows[key] = {"describe": model.describe(), "nfe": int(model.nfe), "steps": int(model.num_steps),
                         "ms_per_batch": timing[key],
                         "speedup": ref_ms / timing[key] if timing[key] > 0 else float("nan"), **scores[key]}
        return {"family": family, "n": n, "batch_size": batch_size, "seed": seed, "reference": ref_name,
                "floor": {k: v for k, v in scores[ref_name].items() if k in FLOOR_KEYS}, "rows": rows}

    def markdown_table(self, result: dict) -> str:
        """One row per model, readable column names, 3 significant digits, and a note on the floor."""
        from pdmd_lab.families.base import _fmt

        rows = result["rows"]
        has_modes = any("modes_covered" in r for r in rows.values())
        cols = [m for m in self.metrics if (m.key == "modes" and has_modes) or any(m.key in r for r in rows.values())]
        lines = ["| model | " + " | ".join(m.label for m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, r in rows.items():
            cells = [f"{r.get('modes_covered', '-')}/{r.get('modes_expected', '-')}" if m.key == "modes"
                     else _fmt(r.get(m.key)) for m in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        floor = ", ".join(f"{k} {_fmt(v)}" for k, v in result.get("floor", {}).items())
        notes = (f"\n{result['n']} samples per model (classes cycling), same noise for every model; reference "
                 f"`{result['reference']}` sampled again with other noise (its own row is the floor: {floor}).\n")
        return "\n".join(lines) + "\n" + notes


def shipped_classifier(dataset: str):
    """``assets/models/<dataset>/classifier`` loaded, or None when the dataset has none."""
    from pdmd_lab.embed import load_classifier

    path = Path(io.ASSETS) / dataset / "classifier"
    return load_classifier(path) if (path / "config.json").exists() else None

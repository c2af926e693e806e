"""Evaluation of shipped (or any) samplers side by side, speed / memory benchmarks, and a diversity callback.

* :func:`evaluate_models`: one family, same labels and same noise for every model; fidelity (Frechet
  distance / energy distance, PRDC), diversity (per-class Vendi, pairwise cosine / distance, each also as a
  ratio to the reference's value), mode coverage (Gaussian-mixture families), class accuracy (images),
  NFE, sampling time and speedup over the reference. :func:`markdown_table` renders the result.
* :func:`score_samples`: the metric pipeline on samples already drawn (what ``evaluate_models`` uses).
* :func:`bench`: sampling speedup of the students over the 50-step CFG teacher, and the training-memory
  argument of Phased DMD: the last phase's rollout (N-1 steps without grad, one with) saves the
  activations of one step, backprop through an N-step generator saves N steps' worth.
* :class:`DiversityMonitor`: a :class:`~pdmd_lab.distill.Distiller` callback logging the student's diversity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pdmd_lab import zoo
from pdmd_lab.families import get_family
from pdmd_lab.families.base import _fmt  # noqa: F401  (bench formats with it)
from pdmd_lab.families.continuous import PRDC_K, REFERENCE_SEED_OFFSET, TEACHER_ROWS  # noqa: F401
from pdmd_lab.families.continuous import batch_noise as _batch_noise  # noqa: F401
from pdmd_lab.families.continuous import cycling_labels as _labels  # noqa: F401
from pdmd_lab.families.continuous import row_name as _row_name
from pdmd_lab.families.points import RBF_BANDWIDTH  # noqa: F401


def _family(model, name: str) -> str:
    fam = getattr(model, "dataset", "") or ""
    if not fam:
        raise ValueError(f"model {name!r} does not say which dataset it samples")
    return fam


def score_samples(family: str, samples_by_name: dict, labels, reference_name: str, *,
                  classifier=None, k: int = PRDC_K) -> dict:
    """Score sample sets of one dataset against ``samples_by_name[reference_name]``: the dataset's family
    does it (:meth:`~pdmd_lab.families.continuous.ContinuousFamily.score`). Images are embedded with
    ``classifier`` (None: flattened pixels, and no class accuracy); points are scored raw."""
    return get_family(family).score(family, samples_by_name, labels, reference_name, classifier=classifier, k=k)


# evaluate_models -------------------------------------------------------------------------------

def evaluate_models(names: list[str], n: int = 1000, *, reference: str | None = None, seed: int = 0,
                    batch_size: int | None = None, out: Path | None = None, progress: bool = True) -> dict:
    """Sample ``n`` outputs (classes cycling) from every model with the same noise, and score them.

    ``names``: zoo names, folders or ``name@steps`` (teachers); all of one dataset, whose family
    (:func:`pdmd_lab.families.get_family`) adds its teacher rows, samples and scores
    (:meth:`~pdmd_lab.families.Family.evaluate`): flow-matching families add the teacher at 50, 4 and 1
    Euler steps and sample ``reference`` (default ``<dataset>/teacher@50``) a second time with other noise
    as the reference set, so its own row is the teacher-vs-teacher floor; token families add the teacher
    at ``k``, ``4k`` and 100 steps and score against the exact joint or held-out data. Returns
    ``{"family", "n", "floor", "rows": {name: {...}}, ...}`` (plus ``"paths"`` when ``out`` is given:
    ``metrics.json`` and ``metrics.md`` are written there). ``batch_size`` None: the family's own.
    """
    if isinstance(names, str):
        names = [names]
    names = [x for x in (names or []) if x]
    if not names:
        raise ValueError("names is empty: give at least one model name")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    models = {}
    for name in names:
        m = zoo.load(name)
        models[_row_name(name, m)] = m
    datasets = {_family(m, k) for k, m in models.items()}
    if len(datasets) != 1:
        raise ValueError(f"models must all be of one family, got {', '.join(sorted(datasets))}")
    dataset = next(iter(datasets))
    family = get_family(dataset)
    result = family.evaluate(models, n=n, seed=seed, batch_size=batch_size, reference=reference, load=zoo.load,
                             progress=progress)
    return _write_outputs(result, out, "metrics", family.markdown_table)


def markdown_table(result: dict) -> str:
    """The result of :func:`evaluate_models` as its family's markdown table (one row per model)."""
    return get_family(result["family"]).markdown_table(result)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# DiversityMonitor ------------------------------------------------------------------------------

class DiversityMonitor:
    """Distiller callback: diversity and saturation of ``n`` student samples at fixed noise.

    Logs ``div_pairwise_distance`` (2D) or ``div_pairwise_cosine`` (images: classifier features when a
    classifier is given, else flattened pixels), ``div_vendi`` (per class, averaged; RBF with bandwidth
    0.5 for 2D, cosine for images) and ``div_saturation``: share of pixel values with ``|x| > 0.98``
    (images) or share of 2D samples outside 3 stds of every mode (Gaussian-mixture families).
    ``every``: compute only on iterations divisible by it (and the last); None: every call.
    """

    def __init__(self, n: int = 256, every: int | None = None, *, classifier=None, seed: int = 1234):
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive integer or None, got {every!r}")
        self.n, self.every, self.classifier, self.seed = n, every, classifier, seed
        self.history: list[dict] = []

    def __call__(self, info: dict) -> dict:
        it = int(info.get("iter", 0))
        d = info.get("distiller")
        last = d is not None and it == getattr(d, "total_iters", -1)
        if self.every is not None and it % self.every != 0 and not last:
            return {}
        student = info["student"]
        family = get_family(student.dataset)
        labels = _labels(self.n, family.num_classes(student.dataset))
        x = student.sample(labels, seed=self.seed).detach().cpu().float()
        logs = self.measure(student.dataset, x, labels)
        self.history.append({"iter": it, **logs})
        return logs

    def measure(self, ds, x: torch.Tensor, labels: torch.Tensor) -> dict:
        """The family's diversity logs (:meth:`~pdmd_lab.families.Family.diversity`) of samples ``x``;
        ``ds`` is a dataset or its name."""
        return get_family(ds).diversity(ds, x, labels, classifier=self.classifier)


def _write_outputs(result: dict, out, stem: str, to_markdown) -> dict:
    """Write ``STEM.json`` and ``STEM.md`` into ``out`` (when given) and record their paths in ``result``."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(_json_ready(result), indent=2))
        (out / f"{stem}.md").write_text(to_markdown(result))
        result["paths"] = {"json": str(out / f"{stem}.json"), "markdown": str(out / f"{stem}.md")}
    return result

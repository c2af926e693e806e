"""Diversity: several models' samples embedded and projected together, with per-class diversity
numbers; and within one class, the teacher's cloud against each model's.

Samples are drawn once per request and model and kept in Compare's cache (``common.TEACHER_CACHE``, same
keys: the two tabs share them; rows cached for fewer samples of a request are kept). A deterministic (Euler)
model's rows are split over the usable cores, and the page's progress counts its steps. ``warm_up`` draws
the tab's first view and its full evaluation's teacher; the app runs it at start, after Compare's.
"""

from __future__ import annotations

import threading
import time

import gradio as gr
import numpy as np
import torch

from app import common, early, rows
from app.common import (
    MAX_CLASS_N,
    MAX_DIVERSITY_N,
    SEED_MAX,
    _continuous_family,
    _int,
    _labels,
    _noise,
    family_of,
    get_zoo,
)
from app.tabs.compare import _teacher_key, teacher_output
from app.tabs.phases import _class_update
from pdmd_lab import metrics, viz
from pdmd_lab.families import Family
from pdmd_lab.families.continuous import PRDC_K

DEFAULT_METHODS = ("teacher@4", "dmd-1s", "phased-dmd-4s4p")  # the tab's first view (and the app's warm-up)
DEFAULT_N = early.DIVERSITY_N  # samples per model (the app's first process draws its teacher's from the start)
POLL_S = 0.5  # how often the page's progress is updated while something computes
SAMPLING_SHARE = 0.85  # of the progress bar: drawing the samples, then embedding and scoring


_RUNNING: dict[tuple, rows.Count] = {}  # cache key -> its count, while a model's samples are drawn


def _model_output(family: str, key: str, seed: int, n: int, cfg: float, class_choice="all"):
    """``(entry, cached)`` of one model's samples of ``class_choice`` (``all``: ``arange(n) % classes``) from
    the seeded noise, kept in :data:`common.TEACHER_CACHE` under Compare's key, so both tabs share them.
    Euler models (the teachers, most students) are drawn here, rows split over threads (:func:`app.rows.split_sample`),
    their steps counted in :data:`_RUNNING`, timed once (the zoo ran every network once at load); the others
    (a re-noising sampler draws noise for the whole batch) as Compare draws them (:func:`teacher_output`)."""
    model = get_zoo().sampler(family, key, cfg)
    if getattr(model, "sampler", "euler") != "euler":
        return teacher_output(family, key, class_choice, seed, n, cfg)
    ckey = _teacher_key(family, key, class_choice, seed, n, cfg)

    def compute():
        count = early.count(ckey)
        if count is not None:  # drawn by ``python -m app.app``'s first process since its start: wait for it
            _RUNNING[ckey] = count
            try:
                drawn = early.take(ckey)
            finally:
                _RUNNING.pop(ckey, None)
            if drawn is not None:
                return drawn
        labels = _labels(class_choice, n, model.num_classes)
        noise = _noise(seed, n, model.shape)
        count = _RUNNING[ckey] = rows.Count()
        head = _cached_head(ckey)  # rows drawn already for fewer samples of the same request (same noise)
        start = 0 if head is None else len(head["x"])
        count.add(start * int(model.num_steps))
        try:
            x, ms = rows.split_sample(model, labels[start:], noise[start:], seed, count)
        finally:
            _RUNNING.pop(ckey, None)
        if head is not None:
            x, ms = torch.cat([head["x"], x]), head["ms"] + ms
        return {"x": x, "ms": ms, "nfe": model.nfe, "labels": labels}

    return common.TEACHER_CACHE.get_or_compute(ckey, compute)


def _cached_head(ckey: tuple) -> dict | None:
    """The cached entry of the request ``ckey`` with the most samples under its ``n``, or None. Noise is drawn
    row by row from the seed and labels cycle from 0, so its rows are the first rows of ``ckey``'s."""
    *same, n, cfg = ckey
    heads = [v for k, v in common.TEACHER_CACHE.items()
             if len(k) == len(ckey) and [*k[:-2], k[-1]] == [*same, cfg] and k[-2] < n and "x" in v]
    return max(heads, key=lambda v: len(v["x"]), default=None)


def _polled(fn, tick):
    """``fn()`` run in a thread while this one calls ``tick(seconds)`` every :data:`POLL_S` (the page's
    progress lives in the request's thread); its exception is raised here."""
    box: dict = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # re-raised in the request's thread
            box["err"] = e

    worker = threading.Thread(target=run, daemon=True, name="diversity")
    t0 = time.perf_counter()
    worker.start()
    while True:
        worker.join(POLL_S)
        if not worker.is_alive():
            break
        tick(time.perf_counter() - t0)
    if "err" in box:
        raise box["err"]
    return box["out"]


def draw_samples(family: str, keys, seed: int, n: int, progress=None, class_choice="all") -> dict:
    """``{key: entry}`` (see :func:`_model_output`) of the models ``keys`` of ``family`` that are built, the
    few-step ones first, each teacher once; ``progress(fraction, desc)`` is called at least every
    :data:`POLL_S` seconds while they are drawn, the fraction counting sample-steps (rows x steps). An entry
    found in the cache holds ``"cached": True``."""
    z = get_zoo()
    cfg = z.models[family]["teacher"].cfg
    models = {k: z.sampler(family, k) for k in dict.fromkeys(keys)}
    todo = sorted((k for k, m in models.items() if m is not None), key=lambda k: int(models[k].num_steps))
    cost = {k: n * int(models[k].num_steps) for k in todo
            if _teacher_key(family, k, class_choice, seed, n, cfg) not in common.TEACHER_CACHE}
    total = max(1, sum(cost.values()))
    out: dict = {}
    now: list = [None]

    def run():
        for k in todo:
            now[0] = k
            entry, cached = _model_output(family, k, seed, n, cfg, class_choice)
            out[k] = {**entry, "cached": cached}
        return out

    def tick(el):
        k = now[0]
        if progress is None or k is None:
            return
        counted = _RUNNING.get(_teacher_key(family, k, class_choice, seed, n, cfg))
        done = sum(c for j, c in cost.items() if j in out) + (min(counted.done, cost.get(k, 0)) if counted else 0)
        steps = int(models[k].num_steps)
        at = f", step {min(steps, counted.done // n + 1)} of {steps}" if counted else ""
        what = (f"the {steps}-step teacher (the reference)" if k == "teacher"
                else f"{k} ({steps} step{'s' if steps != 1 else ''})")
        progress(SAMPLING_SHARE * done / total,
                 desc=f"sampling {what}{at}: {el:.0f} s so far; every model's samples are cached for the next click")

    return _polled(run, tick) if cost else run()


def diversity(family: str, methods, n_per_method, projection, seed=0, full_metrics=False, progress=gr.Progress()):
    """Embed samples of several models (classifier features for images) and project them to 2D.

    The full evaluation scores them with the family's metrics against the 50-step teacher from the same noise.
    Every model's samples come from :data:`common.TEACHER_CACHE` or are drawn once (Euler models with their
    rows split over the usable cores) and cached; the page's progress moves at least every :data:`POLL_S` s.
    """
    z = get_zoo()
    _continuous_family(z, family)
    n = _int(n_per_method, "samples per method", 2, MAX_DIVERSITY_N)
    seed = _int(seed, "seed", 0, SEED_MAX)
    if projection not in ("pca", "tsne"):
        raise gr.Error(f"projection must be 'pca' or 'tsne', got {projection!r}.")
    methods = [m for m in (methods or []) if m]
    if not methods:
        raise gr.Error("Pick at least one method.")
    teacher = z.models[family]["teacher"]
    labels = torch.arange(n) % teacher.num_classes
    clf = z.classifiers.get(family)
    if full_metrics and n < max(2 * teacher.num_classes, PRDC_K + 1):
        raise gr.Error(f"samples per method must be at least {max(2 * teacher.num_classes, PRDC_K + 1)} for the "
                       f"full evaluation (two per class, {PRDC_K + 1} for PRDC), got {n}.")
    skipped = [k for k in methods if z.sampler(family, k) is None]
    if len(skipped) == len(methods):
        raise gr.Error(f"None of the chosen methods is available for {family}: {', '.join(skipped)}.")
    keys = [k for k in methods if k not in skipped]
    entries = draw_samples(family, keys + (["teacher"] if full_metrics else []), seed, n, progress)
    stage: list = ["embedding"]

    def analyse():
        return _analyse(family, keys, entries, labels, projection, seed, n, clf, full_metrics, skipped, stage)

    return _polled(analyse, lambda el: progress(
        SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (0.5 if stage[0] == "scoring" else 0.0),
        desc=f"{stage[0]}: {el:.0f} s"))


def _analyse(family, keys, entries, labels, projection, seed, n, clf, full_metrics, skipped, stage):
    """The figure and table of :func:`diversity` from the drawn samples (``stage[0]`` names the step)."""
    from pdmd_lab.embed import project

    z = get_zoo()
    teacher = z.models[family]["teacher"]
    fam = family_of(family)
    feats, names, rows, samples, by_key = [], [], [], {}, {}
    for key in keys:
        entry = entries[key]
        x = entry["x"]
        f = by_key[key] = fam.features(family, x, clf)  # classifier features (images), the points (2D)
        samples[key] = x
        feats.append(f)
        names += [key] * n
        per = {c: f[labels == c] for c in range(teacher.num_classes) if int((labels == c).sum()) >= 2}
        rows.append((key, entry["nfe"], entry["ms"],
                     float(np.mean([metrics.pairwise_distance(v) for v in per.values()])) if per else float("nan"),
                     float(np.mean([metrics.pairwise_cosine_similarity(v) for v in per.values()])) if per else
                     float("nan"),
                     float(np.mean([metrics.vendi_score(v, kernel="rbf" if x.ndim == 2 else "cosine",
                                                        **({"bandwidth": 0.5} if x.ndim == 2 else {}))
                                    for v in per.values()])) if per else float("nan")))
    stage[0] = f"projecting ({projection.upper()})"
    all_f = torch.cat(feats)
    xy = project(all_f, projection, seed=seed)
    fig = viz.embedding_figure(xy, names, labels.repeat(len(feats)),
                               title=f"{family}: {projection.upper()} of "
                                     f"{'classifier features' if clf is not None else 'samples'}, n = {n} per method")
    lines = ["| model | NFE | ms | pairwise distance per class (higher = more varied) "
             "| cosine similarity (lower = more varied) | Vendi (higher = more varied) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {nfe} | {ms:.0f} | {d:.3g} | {c:.3g} | {v:.3g} |" for k, nfe, ms, d, c, v in rows]
    if skipped:
        lines.append(f"\nSkipped (not built yet): {', '.join(skipped)}")
    if full_metrics:  # the family scores the samples drawn above against the 50-step teacher's (cached)
        stage[0] = "scoring"
        reference = f"teacher, {z.full_steps(family)} steps (reference)"
        if "teacher" in by_key:
            by_key[reference] = by_key["teacher"]
        scores = fam.score(family, {reference: entries["teacher"]["x"], **samples}, labels, reference,
                           classifier=clf, features=by_key)
        lines += ["", f"**Full evaluation** (`{fam.name}` family's scores, reference: the {z.full_steps(family)}-step "
                  "teacher from the same noise, so its own row is exact)", "",
                  Family.markdown_table(fam, {"rows": scores}),
                  f"FD and PRDC from n = {n} samples per model rank models only roughly (FD is biased upward at "
                  "small n); `pdmd-lab evaluate` and the README's tables use thousands, with the reference drawn "
                  "from other noise."]
    return fig, "\n".join(lines)


def warm_up(family: str | None = None) -> float:
    """Draw the samples of the tab's first view and of its full evaluation (``family``, default the first
    flow-matching one: :data:`DEFAULT_METHODS` and the 50-step teacher, seed 0, :data:`DEFAULT_N` each) into
    the cache, so the first click shows them at once; returns the seconds it took. The app runs it in its
    background warm-up at start (``python -m app.app``); tests do not wait for it."""
    z = get_zoo()
    family = family or rows.default_family(z.continuous_families())
    if family is None:
        return 0.0
    t0 = time.perf_counter()
    try:
        draw_samples(family, [*DEFAULT_METHODS, "teacher"], 0, DEFAULT_N)
    except Exception:  # the page reports a failing family with its message
        return float("nan")
    return time.perf_counter() - t0


def _features(family: str, x: torch.Tensor) -> torch.Tensor:
    """Classifier features for images (raw pixels without a classifier), the points themselves in 2D."""
    from pdmd_lab.embed import embed

    clf = get_zoo().classifiers.get(family)
    if x.ndim == 2:
        return x.float()
    return embed(clf, x) if clf is not None else x.reshape(len(x), -1).float()


def class_scores(ref: torch.Tensor, f: torch.Tensor, image: bool) -> dict[str, float]:
    """Within-class numbers of one model against the reference, in feature space: spread (mean pairwise
    distance relative to the reference's), coverage (PRDC, k = 5) and the Vendi score."""
    k = max(1, min(5, len(ref) - 1))
    vendi = (metrics.vendi_score(f, kernel="cosine") if image
             else metrics.vendi_score(f, kernel="rbf", bandwidth=0.5))
    return {"spread": metrics.pairwise_distance(f) / max(metrics.pairwise_distance(ref), 1e-12),
            "coverage": metrics.prdc(ref, f, k=k)["coverage"], "Vendi": vendi}


def class_view(family: str, methods, class_choice, n_per_method, projection, seed=0, progress=gr.Progress()):
    """Within one class: the 50-step teacher's cloud against each chosen model's, with numbers.

    ``n_per_method`` samples of the class per model (drawn by :func:`draw_samples`, with progress, and kept
    in :data:`app.common.TEACHER_CACHE`), embedded (classifier features for images, the points themselves in
    2D), projected together for images (PCA or t-SNE), one panel per model with its spread / coverage /
    Vendi measured in feature space against the teacher's.
    """
    from pdmd_lab.embed import project

    z = get_zoo()
    _continuous_family(z, family)
    n = _int(n_per_method, "samples per model", 6, MAX_CLASS_N)
    seed = _int(seed, "seed", 0, SEED_MAX)
    if projection not in ("pca", "tsne"):
        raise gr.Error(f"projection must be 'pca' or 'tsne', got {projection!r}.")
    teacher = z.models[family]["teacher"]
    c = _int(class_choice, "class", 0, teacher.num_classes - 1)
    methods = [m for m in (methods or []) if m and m != "teacher"]
    if not methods:
        raise gr.Error("Pick at least one model besides the teacher.")
    skipped = [k for k in methods if z.sampler(family, k) is None]
    if len(skipped) == len(methods):
        raise gr.Error(f"None of the chosen models is available for {family}: {', '.join(skipped)}.")
    keys = ["teacher", *[k for k in methods if k not in skipped]]  # the panels' order
    entries = draw_samples(family, keys, seed, n, progress, class_choice=str(c))
    entry, cached = entries["teacher"], entries["teacher"]["cached"]
    feats = {k: _features(family, entries[k]["x"]) for k in keys}
    image = entry["x"].ndim > 2
    names = list(feats)
    if image:
        xy = project(torch.cat([feats[k] for k in names]), projection, seed=seed)
        points = {k: xy[i * n:(i + 1) * n] for i, k in enumerate(names)}
        view = f"{projection.upper()} of classifier features"
    else:
        points = {k: v.numpy() for k, v in feats.items()}
        view = "the samples themselves (2D)"
    scores = {k: class_scores(feats["teacher"], feats[k], image) for k in names}
    fig = viz.class_embedding_figure(points, reference="teacher", scores=scores,
                                     title=f"{family}, class {c}: {view}, n = {n} per model; "
                                           "numbers in feature space vs the 50-step teacher")
    for ax in fig.axes:  # each panel's numbers under it (the table below has them too), not over its points
        for t in list(ax.texts):
            if t.get_bbox_patch() is not None:
                ax.set_xlabel(t.get_text().replace("\n", " · "), fontsize=8)
                t.remove()
    lines = ["| model | spread vs teacher | coverage of teacher | Vendi |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['spread']:.2f} | {v['coverage']:.2f} | {v['Vendi']:.2f} |" for k, v in scores.items()]
    if skipped:
        lines.append(f"\nSkipped (not built yet): {', '.join(skipped)}")
    lines.append(f"\nTeacher samples {'from the cache' if cached else 'computed now (cached for next time)'}.")
    return fig, "\n".join(lines)


def _classes(family: str | None) -> list[str]:
    return [str(c) for c in range(get_zoo().family(family)["teacher"].num_classes)] if family else ["0"]


# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    others, default_other, students = ctx.others, ctx.default_other, ctx.students
    with gr.Tab("Diversity", elem_id="tab-diversity"):
        with gr.Row():
            d_family = gr.Dropdown(others, value=default_other, label="family", elem_id="diversity-family")
            d_methods = gr.CheckboxGroup(["teacher", "teacher@4", *students],
                                         value=[m for m in DEFAULT_METHODS if m.startswith("teacher") or m in students],
                                         label="methods")
        with gr.Row():
            d_n = gr.Number(DEFAULT_N, label=f"samples per method (2..{MAX_DIVERSITY_N})", precision=None)
            d_proj = gr.Radio(["pca", "tsne"], value="pca", label="projection")
            d_seed = gr.Number(0, label="seed", precision=None)
            d_full = gr.Checkbox(False, label="full evaluation (FD, PRDC, diversity vs the 50-step teacher)")
            d_btn = gr.Button("Embed", variant="primary")
        d_fig = gr.Plot(show_label=False, elem_id="diversity-fig")
        d_table = gr.Markdown(elem_id="diversity-table", elem_classes=["nowrap-table"])
        d_btn.click(diversity, [d_family, d_methods, d_n, d_proj, d_seed, d_full], [d_fig, d_table],
                    api_name="diversity")
        gr.Markdown("### Within one class: the teacher's cloud against each model's\n"
                    "Collapse happens *inside* a class: a collapsed student covers a small part of the teacher's "
                    "cloud. Each panel gives the model's spread (mean pairwise distance / the teacher's), its "
                    "coverage of the teacher's samples and its Vendi score, all in feature space.")
        with gr.Row():
            c_family = gr.Dropdown(others, value=default_other, label="family")
            c_methods = gr.CheckboxGroup(["teacher@4", *students],
                                         value=[m for m in ("dmd-1s", "dmd2-sgts-4s", "phased-dmd-4s4p",
                                                            "phased-dmd-4s2p") if m in students],
                                         label="models (against the 50-step teacher)")
        with gr.Row():
            c_class = gr.Dropdown(_classes(default_other), value="3" if "3" in _classes(default_other) else "0",
                                  label="class")
            c_n = gr.Number(32, label=f"samples per model (6..{MAX_CLASS_N})", precision=None)
            c_proj = gr.Radio(["pca", "tsne"], value="pca", label="projection (images)")
            c_seed = gr.Number(0, label="seed", precision=None)
            c_btn = gr.Button("Compare within the class", variant="primary")
        c_fig = gr.Plot(show_label=False, elem_id="class-fig")
        c_table = gr.Markdown(elem_id="class-table", elem_classes=["nowrap-table"])
        c_family.input(lambda f: _class_update(f, with_all=False), [c_family], [c_class])
        c_btn.click(class_view, [c_family, c_methods, c_class, c_n, c_proj, c_seed], [c_fig, c_table],
                    api_name="class_view")


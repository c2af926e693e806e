"""Diversity: several models' samples embedded and projected together, with per-class diversity
numbers; and within one class, the teacher's cloud against each model's.
"""

from __future__ import annotations

import time

import gradio as gr
import numpy as np
import torch

from app.common import (
    MAX_CLASS_N,
    MAX_DIVERSITY_N,
    SEED_MAX,
    _continuous_family,
    _int,
    _noise,
    family_of,
    get_zoo,
)
from app.tabs.compare import teacher_output
from app.tabs.phases import _class_update
from pdmd_lab import metrics, viz
from pdmd_lab.families import Family
from pdmd_lab.families.continuous import PRDC_K


def diversity(family: str, methods, n_per_method, projection, seed=0, full_metrics=False,
              progress=gr.Progress(track_tqdm=True)):
    """Embed samples of several models (classifier features for images) and project them to 2D."""
    z = get_zoo()
    _continuous_family(z, family)
    n = _int(n_per_method, "samples per method", 2, MAX_DIVERSITY_N)
    seed = _int(seed, "seed", 0, SEED_MAX)
    if projection not in ("pca", "tsne"):
        raise gr.Error(f"projection must be 'pca' or 'tsne', got {projection!r}.")
    methods = [m for m in (methods or []) if m]
    if not methods:
        raise gr.Error("Pick at least one method.")
    from pdmd_lab.embed import embed, project

    teacher = z.models[family]["teacher"]
    labels = torch.arange(n) % teacher.num_classes
    noise = _noise(seed, n, teacher.shape)
    clf = z.classifiers.get(family)
    if full_metrics and n < max(2 * teacher.num_classes, PRDC_K + 1):
        raise gr.Error(f"samples per method must be at least {max(2 * teacher.num_classes, PRDC_K + 1)} for the "
                       f"full evaluation (two per class, {PRDC_K + 1} for PRDC), got {n}.")
    feats, names, rows, skipped, samples = [], [], [], [], {}
    steps = len(methods) + (2 if full_metrics else 0)
    for j, key in enumerate(methods):
        progress(j / steps, desc=f"sampling {key}")
        model = z.sampler(family, key)
        if model is None:
            skipped.append(key)
            continue
        if key.startswith("teacher"):  # shared with Compare's cache (class "all", same seed and n)
            entry, _ = teacher_output(family, key, "all", seed, n, teacher.cfg)
            x, ms = entry["x"], entry["ms"]
        else:
            t0 = time.perf_counter()
            x = model.sample(labels, seed=seed, noise=noise)
            ms = 1000 * (time.perf_counter() - t0)
        f = embed(clf, x) if clf is not None or x.ndim == 2 else x.reshape(len(x), -1)
        samples[key] = x
        feats.append(f)
        names += [key] * n
        per = {c: f[labels == c] for c in range(teacher.num_classes) if int((labels == c).sum()) >= 2}
        rows.append((key, model.nfe, ms,
                     float(np.mean([metrics.pairwise_distance(v) for v in per.values()])) if per else float("nan"),
                     float(np.mean([metrics.pairwise_cosine_similarity(v) for v in per.values()])) if per else
                     float("nan"),
                     float(np.mean([metrics.vendi_score(v, kernel="rbf" if x.ndim == 2 else "cosine",
                                                        **({"bandwidth": 0.5} if x.ndim == 2 else {}))
                                    for v in per.values()])) if per else float("nan")))
    if not feats:
        raise gr.Error(f"None of the chosen methods is available for {family}: {', '.join(skipped)}.")
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
        fam = family_of(family)
        progress(len(methods) / steps, desc="full evaluation: the 50-step teacher's samples (the reference; "
                                             "cached for the next click)")
        ref, _ = teacher_output(family, "teacher", "all", seed, n, teacher.cfg)
        reference = f"teacher, {z.full_steps(family)} steps (reference)"
        progress((len(methods) + 1) / steps, desc="full evaluation: scoring")
        scores = fam.score(family, {reference: ref["x"], **samples}, labels, reference, classifier=clf)
        lines += ["", f"**Full evaluation** (`{fam.name}` family's scores, reference: the {z.full_steps(family)}-step "
                  "teacher from the same noise, so its own row is exact)", "",
                  Family.markdown_table(fam, {"rows": scores}),
                  f"FD and PRDC from n = {n} samples per model rank models only roughly (FD is biased upward at "
                  "small n); `pdmd-lab evaluate` and the README's tables use thousands, with the reference drawn "
                  "from other noise."]
    return fig, "\n".join(lines)


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


def class_view(family: str, methods, class_choice, n_per_method, projection, seed=0):
    """Within one class: the 50-step teacher's cloud against each chosen model's, with numbers.

    ``n_per_method`` samples of the class per model (the teacher's from :data:`app.common.TEACHER_CACHE`),
    embedded (classifier features for images, the points themselves in 2D), projected together
    for images (PCA or t-SNE), one panel per model with its spread / coverage / Vendi measured in
    feature space against the teacher's.
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
    entry, cached = teacher_output(family, "teacher", str(c), seed, n, teacher.cfg)
    labels = entry["labels"]
    noise = _noise(seed, n, teacher.shape)
    feats = {"teacher": _features(family, entry["x"])}
    skipped = []
    for key in methods:
        model = z.sampler(family, key)
        if model is None:
            skipped.append(key)
            continue
        feats[key] = _features(family, model.sample(labels, seed=seed, noise=noise))
    if len(feats) < 2:
        raise gr.Error(f"None of the chosen models is available for {family}: {', '.join(skipped)}.")
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
            d_family = gr.Dropdown(others, value=default_other, label="family")
            d_methods = gr.CheckboxGroup(["teacher", "teacher@4", *students],
                                         value=["teacher@4", "dmd-1s", "phased-dmd-4s4p"], label="methods")
        with gr.Row():
            d_n = gr.Number(100, label=f"samples per method (2..{MAX_DIVERSITY_N})", precision=None)
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


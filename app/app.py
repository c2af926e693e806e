"""pdmd_lab in the browser: teacher vs DMD vs Phased DMD side by side, phases, diversity, live distillation.

Thin: every number and figure comes from the library (``pdmd_lab.zoo``, ``metrics``, ``embed``, ``viz``,
``distill``). Models load once, at start-up; a family or model missing from ``assets/models`` is
skipped with a note. Run ``python -m app.app [--host H] [--port P]`` (default 127.0.0.1:7860).

API endpoints (``gradio_client``): ``/generate``, ``/phases``, ``/trajectory``, ``/diversity``, ``/distill``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import math  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from pdmd_lab import flow, metrics, viz, zoo  # noqa: E402
from pdmd_lab.data import get_dataset  # noqa: E402

FAMILIES = ("mnist", "ring-mix")
SEED_MAX = 2**31 - 1
MAX_SAMPLES = 64
MAX_CFG = 10.0
MAX_DIVERSITY_N = 512
MAX_DISTILL_ITERS = 2000
DISTILL_INIT_ITERS = 500  # iterations fitting the student's starting network to the oracle (once per process)
TEACHER_STEPS = 50
# The six Compare panels: (key, title). "teacher" and "teacher@4" are the family's teacher at 50 / 4 steps.
PANELS = (
    ("teacher", "Teacher, 50 steps"),
    ("teacher@4", "Teacher cut to 4 steps (no distillation)"),
    ("dmd-1s", "DMD, 1 step"),
    ("dmd2-sgts-4s", "DMD2-SGTS, 4 steps"),
    ("phased-dmd-4s4p", "Phased DMD, 4 steps / 4 phases"),
    ("dp-dmd-4s", "DP-DMD, 4 steps"),
)
STUDENTS = ("phased-dmd-4s4p", "phased-dmd-4s2p", "dmd2-sgts-4s", "dp-dmd-4s", "dmd-1s")
DISTILL_METHODS = {  # label -> (method, steps, phases)
    "phased-dmd (4 steps, 4 phases)": ("phased-dmd", 4, 4),
    "phased-dmd (4 steps, 2 phases)": ("phased-dmd", 4, 2),
    "dmd2-sgts (4 steps)": ("dmd2-sgts", 4, 1),
    "dp-dmd (4 steps)": ("dp-dmd", 4, 1),
    "dmd (1 step)": ("dmd", 1, 1),
}


# Models ----------------------------------------------------------------------------------------

class Zoo:
    """The shipped models, loaded once: ``models[family][key]`` and the notes about what is missing."""

    def __init__(self, families=FAMILIES):
        self.models: dict[str, dict] = {}
        self.notes: list[str] = []
        self.classifiers: dict = {}
        available = set(zoo.list_models())
        for family in families:
            if f"{family}/teacher" not in available:
                self.notes.append(f"family **{family}** skipped: no teacher in assets/models")
                continue
            try:
                loaded = {"teacher": zoo.load(f"{family}/teacher", steps=TEACHER_STEPS)}
            except Exception as e:  # a broken teacher folder: skip the family, keep the app up
                self.notes.append(f"family **{family}** skipped: teacher failed to load ({e})")
                continue
            for key in STUDENTS:
                name = f"{family}/{key}"
                if name not in available:
                    self.notes.append(f"`{name}` is not built yet: its panel stays empty")
                    continue
                try:
                    loaded[key] = zoo.load(name)
                except Exception as e:
                    self.notes.append(f"`{name}` failed to load ({e})")
            self.models[family] = loaded
            with torch.no_grad():  # warm-up: the first call of a network is slow; keep it out of the timings
                for key, m in loaded.items():
                    (m.with_steps(1) if key == "teacher" else m).sample([0])
            if get_dataset(family).kind == "image":
                clf = zoo.ASSETS / family / "classifier"
                if (clf / "config.json").exists():
                    from pdmd_lab.embed import load_classifier

                    self.classifiers[family] = load_classifier(clf)
                else:
                    self.notes.append(f"`{family}/classifier` missing: diversity uses raw pixels")

    @property
    def families(self) -> list[str]:
        return list(self.models)

    def family(self, family: str) -> dict:
        if family not in self.models:
            raise gr.Error(f"Unknown or unavailable family {family!r}; available: {', '.join(self.models) or 'none'}.")
        return self.models[family]

    def sampler(self, family: str, key: str, cfg: float | None = None):
        """The model of ``key`` in ``family`` (teachers at ``cfg``), or None when it is not built."""
        models = self.family(family)
        if key.startswith("teacher"):
            steps = int(key.split("@")[1]) if "@" in key else TEACHER_STEPS
            return models["teacher"].with_steps(steps, cfg)
        return models.get(key)


_ZOO: Zoo | None = None
_ZOO_LOCK = threading.Lock()


def get_zoo() -> Zoo:
    global _ZOO
    with _ZOO_LOCK:
        if _ZOO is None:
            _ZOO = Zoo()
        return _ZOO


# Validation and helpers --------------------------------------------------------------------------

def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}.") from None
    if not math.isfinite(v) or v != int(v) or not lo <= v <= hi:
        raise gr.Error(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}.")
    return int(v)


def _float(value, name: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}.") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise gr.Error(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}.")
    return v


def _labels(class_choice, n: int, num_classes: int) -> torch.Tensor:
    if class_choice in (None, "", "all"):
        return torch.arange(n) % num_classes
    c = _int(class_choice, "class", 0, num_classes - 1)
    return torch.full((n,), c, dtype=torch.long)


def _noise(seed: int, n: int, shape) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def figure_array(fig) -> np.ndarray:
    """A matplotlib Figure rendered to an RGB uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _image_panel(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    n = len(x)
    grid = viz.image_grid_array(x, max(1, math.ceil(math.sqrt(n))))
    return np.repeat(np.repeat(grid, scale, 0), scale, 1)  # nearest-neighbour upscale for the page


def _empty_panel(size: int = 96) -> np.ndarray:
    return np.full((size, size, 3), 235, dtype=np.uint8)


def _panel(family: str, title: str, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    if x.ndim == 2:
        fig = viz.scatter_figure({title: (x, labels)}, get_dataset(family).gmm)
        return figure_array(fig)
    return _image_panel(x)


def _diversity(x: torch.Tensor) -> float | None:
    return metrics.pairwise_distance(x.reshape(len(x), -1)) if len(x) >= 2 else None


# Compare -----------------------------------------------------------------------------------------

def generate(family: str, class_choice, seed, num_samples, cfg):
    """Six panels from the same noise: teacher (50 steps), teacher (4 steps), DMD, DMD2-SGTS, Phased DMD, DP-DMD.

    Returns 6 images, 6 captions (NFE, milliseconds, speedup over the 50-step teacher, pairwise
    diversity) and a summary note.
    """
    z = get_zoo()
    z.family(family)
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, MAX_SAMPLES)
    cfg = _float(cfg, "teacher CFG", 0.0, MAX_CFG)
    teacher = z.models[family]["teacher"]
    labels = _labels(class_choice, n, teacher.num_classes)
    noise = _noise(seed, n, teacher.shape)
    images, captions, times = [], [], {}
    for key, title in PANELS:
        model = z.sampler(family, key, cfg)
        if model is None:
            images.append(_empty_panel())
            captions.append(f"**{title}**: not available (`{family}/{key}` is not built yet)")
            continue
        t0 = time.perf_counter()
        x = model.sample(labels, seed=seed, noise=noise)
        ms = 1000 * (time.perf_counter() - t0)
        times[key] = ms
        div = _diversity(x)
        speed = f"{times['teacher'] / ms:.1f}× vs 50-step teacher" if "teacher" in times else ""
        images.append(_panel(family, title, x, labels))
        captions.append(f"**{title}**  \nNFE {model.nfe} · {ms:.0f} ms · {speed}  \n"
                        f"pairwise diversity {'n/a (1 sample)' if div is None else f'{div:.3f}'}")
    what = "all classes" if class_choice in (None, "", "all") else f"class {class_choice}"
    summary = (f"{family}, {what}, seed {seed}, {n} sample(s), teacher CFG {cfg:g}; every panel starts from the "
               "same noise. Speedup = teacher (50 steps) time / model time.")
    return (*images, *captions, summary)


# Phases and trajectories -----------------------------------------------------------------------

def phases(steps, num_phases, shift):
    """Step times and phase subintervals for ``steps`` Euler steps split into ``num_phases`` phases."""
    steps = _int(steps, "steps", 1, 64)
    k = _int(num_phases, "phases", 1, 64)
    shift = _float(shift, "shift", 0.05, 20.0)
    if k > steps or steps % k:
        raise gr.Error(f"phases must divide steps: {k} phase(s) cannot split {steps} step(s) evenly "
                       f"(try {', '.join(str(d) for d in range(1, steps + 1) if steps % d == 0)}).")
    ts = flow.step_times(steps, shift)
    bounds = flow.phase_boundaries(steps, k, shift)
    rows = sorted({1, k} | ({2} if steps % 2 == 0 and k != 2 and steps >= 2 else set()))
    fig_p = viz.phases_figure(steps, phase_counts=tuple(rows), shift=shift)
    fig_s = viz.snr_figure(ts, bounds, shifts=(shift,))
    text = ("step times t: " + ", ".join(f"{t:.3f}" for t in ts.tolist()) + "  \nphase boundaries: "
            + ", ".join(f"{b:.3f}" for b in bounds.tolist()) + f"  \n{steps // k} step(s) per phase")
    return fig_p, fig_s, text


def trajectory(family: str, student: str, class_choice, seed, num_samples):
    """Trajectories of a student and of the teacher cut to 4 steps, from the same noise."""
    z = get_zoo()
    z.family(family)
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, 32)
    model = z.sampler(family, student)
    if model is None:
        raise gr.Error(f"{family}/{student} is not available (not built yet).")
    teacher = z.sampler(family, "teacher@4")
    labels = _labels(class_choice, n, model.num_classes)
    noise = _noise(seed, n, model.shape)
    figs = []
    for m in (model, teacher):
        _, traj = m.sample(labels, seed=seed, noise=noise, return_trajectory=True)
        ts = m.step_times
        experts = [m.expert_index(float(t)) for t in ts[:-1]]
        figs.append(viz.trajectory_figure(traj, experts, labels=labels, dataset=family, step_times=ts))
    return figs[0], figs[1]


# Diversity ---------------------------------------------------------------------------------------

def _has_evaluate() -> bool:
    try:
        import pdmd_lab.evaluate as ev

        return hasattr(ev, "evaluate_models") and hasattr(ev, "markdown_table")
    except ImportError:
        return False


def diversity(family: str, methods, n_per_method, projection, seed=0, full_metrics=False):
    """Embed samples of several models (classifier features for images) and project them to 2D."""
    z = get_zoo()
    z.family(family)
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
    feats, names, rows, skipped = [], [], [], []
    for key in methods:
        model = z.sampler(family, key)
        if model is None:
            skipped.append(key)
            continue
        t0 = time.perf_counter()
        x = model.sample(labels, seed=seed, noise=noise)
        ms = 1000 * (time.perf_counter() - t0)
        f = embed(clf, x) if clf is not None or x.ndim == 2 else x.reshape(len(x), -1)
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
    lines = ["| model | NFE | ms | pair dist (per class) | cos sim (lower = diverse) | Vendi |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {nfe} | {ms:.0f} | {d:.3g} | {c:.3g} | {v:.3g} |" for k, nfe, ms, d, c, v in rows]
    if skipped:
        lines.append(f"\nSkipped (not built yet): {', '.join(skipped)}")
    if full_metrics and _has_evaluate():
        from pdmd_lab.evaluate import evaluate_models, markdown_table

        names_full = [f"{family}/{k}" if not k.startswith("teacher") else f"{family}/teacher@{TEACHER_STEPS}"
                      for k in methods if k not in skipped]
        result = evaluate_models(names_full, max(n, 20), seed=seed, progress=False)
        lines += ["", "**Full evaluation** (`pdmd_lab.evaluate`, reference: 50-step teacher)", "",
                  markdown_table(result)]
    return fig, "\n".join(lines)


# Distill live ----------------------------------------------------------------------------------

def distill_live(method_label, cfg, iters, compare_shipped=False, progress=gr.Progress()):
    """Distill a ring-mix student from the exact oracle, streaming scatter plots and loss curves."""
    from pdmd_lab.distill import DistillConfig, Distiller

    if method_label not in DISTILL_METHODS:
        raise gr.Error(f"Unknown method {method_label!r}; choose one of: {', '.join(DISTILL_METHODS)}.")
    cfg = _float(cfg, "CFG", 0.0, MAX_CFG)
    iters = _int(iters, "iterations", 4, MAX_DISTILL_ITERS)
    method, steps, k = DISTILL_METHODS[method_label]
    iters = max(k, iters - iters % k)
    config = DistillConfig(teacher="oracle:ring-mix", method=method, steps=steps, phases=k, cfg=cfg, iters=iters,
                           batch_size=256, lr_generator=1e-3, lr_fake=1e-3, fake_updates_per_generator_update=3,
                           init_iters=DISTILL_INIT_ITERS)
    ds = get_dataset("ring-mix")
    n = 512
    labels = torch.arange(n) % ds.num_classes
    noise = _noise(0, n, ds.shape)
    every = max(1, iters // 10)
    events: queue.Queue = queue.Queue()
    records: list[dict] = []

    def callback(info):
        x = info["student"].sample(labels, noise=noise)
        events.put(("step", info["iter"], info["phase"], x, {k_: v for k_, v in info["logs"].items()
                                                             if isinstance(v, (int, float))}))

    def run():
        try:
            distiller = Distiller(config, out=None, progress=False, callbacks=[callback], callback_every=every)
            events.put(("done", distiller.train()))
        except Exception as e:  # shown in the page, not as a traceback
            events.put(("error", e))

    progress(0, desc="fitting the initial network to the oracle")
    threading.Thread(target=run, daemon=True).start()
    title = f"{method_label}, CFG {cfg:g}"
    while True:
        ev = events.get()
        if ev[0] == "error":
            raise gr.Error(f"Distillation failed: {ev[1]}")
        if ev[0] == "done":
            break
        _, it, phase, x, logs = ev
        records.append({"iter": it, "phase": phase, **logs})
        progress(it / iters, desc=f"iteration {it}/{iters}")
        scatter = viz.scatter_figure({f"student, iteration {it}": (x, labels)}, ds.gmm, title=title)
        yield scatter, viz.training_curves_figure(records), f"iteration {it}/{iters} (phase {phase})", gr.skip()
    student = ev[1]
    x = student.sample(labels, noise=noise)
    panels = {"trained here": (x, labels)}
    if compare_shipped:
        z = get_zoo()
        for key in ("teacher", *STUDENTS):
            m = z.sampler("ring-mix", key) if "ring-mix" in z.models else None
            if m is not None:
                panels[f"shipped {key}"] = (m.sample(labels, noise=noise), labels)
    curves = viz.training_curves_figure(records) if records else None
    yield (viz.scatter_figure(panels, ds.gmm, title=title, max_cols=4), curves,
           f"done: {iters} iterations; the student is kept for this session ({student.describe()})", student)


# Layout ----------------------------------------------------------------------------------------

def build_app() -> gr.Blocks:
    """The Gradio Blocks of the app (models load here, once)."""
    z = get_zoo()
    families = z.families
    default_family = "mnist" if "mnist" in families else (families[0] if families else None)
    max_classes = max((z.models[f]["teacher"].num_classes for f in families), default=10)
    class_choices = ["all"] + [str(c) for c in range(max_classes)]
    notes = "  \n".join(f"- {n}" for n in z.notes)

    with gr.Blocks(title="pdmd_lab: Phased DMD explorer") as demo:
        gr.Markdown("# pdmd_lab: few-step distillation, side by side\n"
                    "Teacher (50 Euler steps) vs DMD vs DMD2-SGTS vs **Phased DMD** vs DP-DMD, same noise, same class.")
        if notes:
            gr.Markdown(f"<details><summary>Model notes</summary>\n\n{notes}\n</details>")
        with gr.Tab("Compare"):
            with gr.Row():
                family = gr.Dropdown(families, value=default_family, label="family")
                klass = gr.Dropdown(class_choices, value="all", label="class", allow_custom_value=True,
                                    elem_id="class-dd")
                seed = gr.Number(0, label=f"seed (0..{SEED_MAX})", precision=0)
                count = gr.Number(16, label=f"number of samples (1..{MAX_SAMPLES})", precision=0,
                                  elem_id="count-num")
                cfg = gr.Number(zoo.TEACHER_CFG.get(default_family, 3.0), label="teacher CFG (0..10)")
            btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            images, captions = [], []
            with gr.Row(equal_height=False):
                for i, (_, title) in enumerate(PANELS[:3]):
                    with gr.Column(min_width=200):
                        images.append(gr.Image(label=title, type="numpy", format="png", interactive=False,
                                               elem_id=f"panel-{i}", elem_classes=["panel"]))
                        captions.append(gr.Markdown(elem_id=f"caption-{i}"))
            with gr.Row(equal_height=False):
                for i, (_, title) in enumerate(PANELS[3:], start=3):
                    with gr.Column(min_width=200):
                        images.append(gr.Image(label=title, type="numpy", format="png", interactive=False,
                                               elem_id=f"panel-{i}", elem_classes=["panel"]))
                        captions.append(gr.Markdown(elem_id=f"caption-{i}"))
            summary = gr.Markdown(elem_id="summary")
            btn.click(generate, [family, klass, seed, count, cfg], [*images, *captions, summary],
                      api_name="generate")

        with gr.Tab("Phases"):
            with gr.Row():
                p_steps = gr.Number(4, label="steps", precision=0)
                p_phases = gr.Number(4, label="phases (must divide steps)", precision=0)
                p_shift = gr.Number(1.0, label="time shift")
                p_btn = gr.Button("Show phases", variant="primary")
            p_fig = gr.Plot(label="phases on the log-SNR axis")
            s_fig = gr.Plot(label="SNR and log-SNR")
            p_text = gr.Markdown()
            p_btn.click(phases, [p_steps, p_phases, p_shift], [p_fig, s_fig, p_text], api_name="phases")
            gr.Markdown("### Trajectories: a student vs the teacher cut to 4 steps (same noise)")
            with gr.Row():
                t_family = gr.Dropdown(families, value=default_family, label="family")
                t_student = gr.Dropdown(list(STUDENTS), value="phased-dmd-4s4p", label="student")
                t_class = gr.Dropdown(class_choices, value="all", label="class", allow_custom_value=True)
                t_seed = gr.Number(0, label="seed", precision=0)
                t_n = gr.Number(6, label="samples (1..32)", precision=0)
                t_btn = gr.Button("Show trajectories", variant="primary")
            with gr.Row():
                t_fig_s = gr.Plot(label="student")
                t_fig_t = gr.Plot(label="teacher, 4 steps")
            t_btn.click(trajectory, [t_family, t_student, t_class, t_seed, t_n], [t_fig_s, t_fig_t],
                        api_name="trajectory")

        with gr.Tab("Diversity"):
            with gr.Row():
                d_family = gr.Dropdown(families, value=default_family, label="family")
                d_methods = gr.CheckboxGroup(["teacher", "teacher@4", *STUDENTS],
                                             value=["teacher@4", "dmd-1s", "phased-dmd-4s4p"], label="methods")
            with gr.Row():
                d_n = gr.Number(100, label=f"samples per method (2..{MAX_DIVERSITY_N})", precision=0)
                d_proj = gr.Radio(["pca", "tsne"], value="pca", label="projection")
                d_seed = gr.Number(0, label="seed", precision=0)
                d_full = gr.Checkbox(False, label="full evaluation (pdmd_lab.evaluate, slower)",
                                     visible=_has_evaluate())
                d_btn = gr.Button("Embed", variant="primary")
            d_fig = gr.Plot(label="embedding")
            d_table = gr.Markdown()
            d_btn.click(diversity, [d_family, d_methods, d_n, d_proj, d_seed, d_full], [d_fig, d_table],
                        api_name="diversity")

        with gr.Tab("Distill live"):
            gr.Markdown("Distill a **ring-mix** student from the exact oracle teacher, live (CPU, a few seconds "
                        "per 100 iterations).")
            with gr.Row():
                l_method = gr.Dropdown(list(DISTILL_METHODS), value=next(iter(DISTILL_METHODS)), label="method")
                l_cfg = gr.Number(3.0, label="CFG (0..10)")
                l_iters = gr.Number(200, label=f"iterations (4..{MAX_DISTILL_ITERS})", precision=0)
                l_compare = gr.Checkbox(True, label="compare with the shipped models at the end")
                l_btn = gr.Button("Distill", variant="primary")
            l_status = gr.Markdown()
            with gr.Row():
                l_scatter = gr.Plot(label="student samples")
                l_curves = gr.Plot(label="losses")
            l_state = gr.State(None)
            l_btn.click(distill_live, [l_method, l_cfg, l_iters, l_compare], [l_scatter, l_curves, l_status, l_state],
                        api_name="distill")
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="pdmd_lab Gradio app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PDMD_APP_THREADS", "1")),
                        help="torch intra-op threads (default 1: the models are small, and requests run in parallel)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    demo = build_app()
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()

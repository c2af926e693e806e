"""Live distillation on ring-mix for the app: the "Distill live" and "Collapse lab" tabs.

The methods offered are the distillation registry's (``pdmd_lab.distill.methods.METHODS`` when the
engine has it, the trainer's ``METHODS`` otherwise); each gets its ring-mix recipe's settings (steps,
phases) when a recipe names it, else the first step count its validation accepts. Training goes
through the public one-call helper ``pdmd_lab.distill.distill(config, callbacks=...)``; a
:class:`~pdmd_lab.evaluate.DiversityMonitor` callback measures diversity while it trains.
"""

from __future__ import annotations

import math
import queue
import threading
import time

import gradio as gr
import torch
from matplotlib.figure import Figure

from pdmd_lab import metrics, viz, zoo
from pdmd_lab.data import get_dataset

FAMILY = "ring-mix"
MAX_CFG = 10.0
MAX_DISTILL_ITERS = 2000
MAX_LAB_ITERS = 1000
LAB_UPDATE_S = 0.75  # live tabs redraw at most this often (or as often as drawing takes), and once at the end
DISTILL_INIT_ITERS = 500  # iterations fitting the student's starting network to the oracle (once per process)
# Settings shared by every live run (the ring-mix recipes' learning rates; a smaller batch for speed).
LIVE = {"teacher": f"oracle:{FAMILY}", "batch_size": 256, "lr_generator": 1e-3, "lr_fake": 1e-3,
        "fake_updates_per_generator_update": 3}
# Used when neither the engine's recipes nor the zoo's entries are importable (older layouts).
FALLBACK_PRESETS = {
    "phased-dmd-4s4p": {"method": "phased-dmd", "steps": 4, "phases": 4},
    "phased-dmd-4s2p": {"method": "phased-dmd", "steps": 4, "phases": 2},
    "dmd2-sgts-4s": {"method": "dmd2-sgts", "steps": 4},
    "dp-dmd-4s": {"method": "dp-dmd", "steps": 4},
    "dmd-1s": {"method": "dmd", "steps": 1},
}


# The registry, recipes and configs --------------------------------------------------------------

def registry_methods() -> dict:
    """``name -> Method class`` (engine registry) or ``name -> None`` (older trainer's tuple)."""
    try:
        from pdmd_lab.distill.methods import METHODS
    except ImportError:
        from pdmd_lab.distill import METHODS
    return dict(METHODS) if isinstance(METHODS, dict) else dict.fromkeys(METHODS)


def _recipe_presets() -> dict[str, dict]:
    """``short name -> {"method", "steps", method options}`` of the ring-mix student recipes."""
    try:
        from pdmd_lab.recipes import RECIPES

        items = {n: r for n, r in RECIPES.items() if r.get("kind") == "student"}
    except ImportError:  # before the engine's recipes: the zoo's entries
        items = {e.name: e.args for e in getattr(zoo, "ENTRIES", []) if e.kind == "student"}
    drop = set(LIVE) | {"kind", "cfg", "iters", "teacher", "init_iters", "checkpoint_every", "log_every"}
    out = {n.split("/", 1)[1]: {k: v for k, v in r.items() if k not in drop}
           for n, r in items.items() if n.startswith(f"{FAMILY}/")}
    # Methods with no shipped-model recipe (the disjoint ablation): their study row, named as in the README.
    for n, r in items.items():
        if n.startswith(f"study/{FAMILY}/") and r.get("method") not in {s.get("method") for s in out.values()}:
            out[n.rsplit("/", 1)[1]] = {k: v for k, v in r.items() if k not in drop}
    return out or dict(FALLBACK_PRESETS)


def make_config(spec: dict, *, cfg: float, iters: int, init_iters: int, batch_size: int | None = None):
    """A DistillConfig from a flat spec (method, steps, method options) plus the live settings."""
    from pdmd_lab.distill import DistillConfig

    flat = {**LIVE, **spec, "cfg": cfg, "iters": iters, "init_iters": init_iters}
    if batch_size is not None:
        flat["batch_size"] = batch_size
    if hasattr(DistillConfig, "from_flat"):
        return DistillConfig.from_flat(**flat)
    return DistillConfig(**flat)


def _num_phases(spec: dict) -> int:
    """Phases of a spec (iterations must split evenly over them)."""
    try:
        c = make_config(spec, cfg=1.0, iters=64, init_iters=1)
        return int(c.build_method().num_phases if hasattr(c, "build_method") else c.num_phases)
    except ValueError:
        return int(spec.get("phases", 1))


def method_presets() -> dict[str, dict]:
    """Live-tab choices: ``label -> flat spec``. Every registry method that trains on a continuous
    teacher appears; recipes give their settings, other methods the first accepted step count."""
    methods = registry_methods()
    usable = {m for m, cls in methods.items() if getattr(cls, "teacher_kind", "continuous") == "continuous"}
    out = {n: s for n, s in _recipe_presets().items() if s.get("method") in usable}
    for m in sorted(usable - {s["method"] for s in out.values()}):
        for steps in (4, 2, 1):
            try:
                make_config({"method": m, "steps": steps}, cfg=1.0, iters=64, init_iters=1)
            except (ValueError, TypeError):
                continue
            out[f"{m}-{steps}s"] = {"method": m, "steps": steps}
            break
    return out


# The training logs' keys as the curves name them (other keys are shown as they are).
LOSS_NAMES = {
    "loss_fake": "fake-score loss (critic)",
    "loss_dmd": "DMD loss ½|g|² (generator)",
    "loss_generator": "generator loss (total)",
    "dmd_grad_norm": "DMD gradient norm |g|",
    "loss_anchor": "DP-DMD anchor loss",
    "loss_critic": "critic loss",
}
LOSS_NOTE = ("The DMD loss is a surrogate whose gradient is the DMD gradient g: its value is ½ mean |g|², not a "
             "distance that training drives to 0. With the paper's weighting (1 − t)² / ((1 − s) t) it grows in "
             "the last phases, which draw t close to 0.")


def readable(records: list[dict]) -> list[dict]:
    """Training records with their loss keys renamed by :data:`LOSS_NAMES` (for the curves' titles)."""
    return [{LOSS_NAMES.get(k, k): v for k, v in r.items()} for r in records]


def describe_spec(spec: dict) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in spec.items() if k not in ("method", "steps"))
    return f"{spec['method']}, {spec['steps']} step(s)" + (f", {extra}" if extra else "")


PRESETS = method_presets()  # at import; the tabs read method_presets() again (a method registered later appears)


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


def _preset(label) -> dict:
    presets = method_presets()
    if label not in presets:
        raise gr.Error(f"Unknown method {label!r}; choose one of: {', '.join(presets)}.")
    return presets[label]


def _round_iters(iters: int, spec: dict, what: str = "iterations") -> int:
    """Iterations (``what``) are split equally over the phases: a remainder is dropped, and the user is told so."""
    k = _num_phases(spec)
    rounded = max(k, iters - iters % k)
    if rounded != iters:
        gr.Warning(f"{iters} {what} do not split over {k} phases: training {rounded} instead.")
    return rounded


class _Stopped(Exception):
    """Raised from a callback to end a run whose page went away."""


# Distill live ----------------------------------------------------------------------------------

def distill_live(method_label, cfg, iters, compare_shipped=False, progress=gr.Progress()):
    """Distill a ring-mix student from the exact oracle, streaming scatter plots and loss curves."""
    from pdmd_lab.distill import distill

    spec = _preset(method_label)
    cfg = _float(cfg, "CFG", 0.0, MAX_CFG)
    iters = _round_iters(_int(iters, "iterations", 4, MAX_DISTILL_ITERS), spec)
    config = make_config(spec, cfg=cfg, iters=iters, init_iters=DISTILL_INIT_ITERS)
    ds = get_dataset(FAMILY)
    n = 512
    labels = torch.arange(n) % ds.num_classes
    noise = torch.randn((n, *ds.shape), generator=torch.Generator().manual_seed(0))
    every = max(1, iters // 10)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    records: list[dict] = []

    def callback(info):
        if stop.is_set():
            raise _Stopped
        x = info["student"].sample(labels, noise=noise)
        events.put(("step", info["iter"], info["phase"], x, {k_: v for k_, v in info["logs"].items()
                                                             if isinstance(v, (int, float))}))

    def run():
        try:
            events.put(("done", distill(config, progress=False, callbacks=[callback], callback_every=every)))
        except _Stopped:
            events.put(("stopped",))
        except Exception as e:  # shown in the page, not as a traceback
            events.put(("error", e))

    progress(0, desc="fitting the initial network to the oracle")
    threading.Thread(target=run, daemon=True).start()
    title = f"{method_label}, CFG {cfg:g}"
    last, gap = -math.inf, LAB_UPDATE_S
    first: tuple | None = None  # (time, iteration) of the first report: the rate excludes the starting fit
    rate = None  # seconds per 100 iterations, measured
    try:
        while True:
            ev = events.get()
            if ev[0] == "error":
                raise gr.Error(f"Distillation failed: {ev[1]}")
            if ev[0] in ("done", "stopped"):
                break
            _, it, phase, x, logs = ev
            now = time.perf_counter()
            first = first or (now, it)
            rate = (now - first[0]) / (it - first[1]) * 100 if it > first[1] else None
            records.append({"iter": it, "phase": phase, **logs})
            progress(it / iters, desc=f"iteration {it}/{iters}")
            if time.perf_counter() - last < gap:
                continue  # redraw at most every `gap` seconds; the records keep every report
            drawn = time.perf_counter()
            scatter = viz.scatter_figure({f"student, iteration {it}": (x, labels)}, ds.gmm, title=title)
            status = f"iteration {it}/{iters} (phase {phase})" + (
                f" · {rate:.0f} s per 100 iterations on this machine" if rate else "")
            yield scatter, viz.training_curves_figure(readable(records)), status, gr.skip()
            last = time.perf_counter()
            gap = max(LAB_UPDATE_S, last - drawn)
    finally:
        stop.set()
    student = ev[1]
    x = student.sample(labels, noise=noise)
    panels = {"trained here": (x, labels)}
    if compare_shipped:
        for key in ("teacher", *FALLBACK_PRESETS):
            name = f"{FAMILY}/{key}"
            if name in zoo.list_models():
                panels[f"shipped {key}"] = (zoo.load(name).sample(labels, noise=noise), labels)
    curves = viz.training_curves_figure(readable(records)) if records else None
    yield (viz.scatter_figure(panels, ds.gmm, title=title, max_cols=4), curves,
           f"done: {iters} iterations" + (f" ({rate:.0f} s per 100)" if rate else "")
           + f"; the student is kept for this session ({student.describe()})  \n{LOSS_NOTE}", student)


# Collapse lab ----------------------------------------------------------------------------------

LAB_N = 512  # samples per snapshot (fixed noise, classes cycling)
LAB_CURVES = (  # (key in a record, panel title)
    ("coverage", "mode coverage (higher: fewer modes dropped)"),
    ("kl", "KL vs the teacher's mode histogram (lower: closer)"),
    ("div_vendi", "Vendi score within a class (RBF)"),
    ("div_pairwise_distance", "pairwise distance within a class"),
)


def _lab_measure(ds, x, labels, teacher_hist) -> dict:
    cov = metrics.mode_coverage(ds.gmm, x, labels, reference_weights=teacher_hist)
    return {"coverage": cov["coverage"], "kl": cov["kl"], "high_quality": cov["high_quality"]}


# Methods A and B in the Collapse lab: colours no class of ring-mix uses (its 4 classes are tab10's blue,
# orange, green and red in the scatters), the same in the curves and in the scatters' titles.
LAB_COLORS = ("#222222", "#8e44ad")
LAB_TEACHER_COLOR = "#8c8c8c"


def lab_colors(names) -> dict[str, str]:
    """Colour of each Collapse-lab method (A near-black, B purple) and of the teacher (grey, dashed)."""
    return {"teacher": LAB_TEACHER_COLOR, **{n: LAB_COLORS[i % len(LAB_COLORS)] for i, n in enumerate(names)}}


def lab_curves_figure(histories: dict, teacher: dict, *, total: dict | None = None) -> Figure:
    """Diversity / coverage against generator updates, one line per method (A near-black, B purple,
    never a class colour), the teacher's value dashed grey."""
    names = list(histories)
    colors, markers = lab_colors(names), viz.method_markers(["teacher", *names])
    fig = Figure(figsize=(10, 5.4), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, title) in zip(axes, LAB_CURVES):
        for name in names:
            h = [r for r in histories[name] if key in r]
            if h:
                ax.plot([r["iter"] for r in h], [r[key] for r in h], color=colors[name], marker=markers[name],
                        ms=4, lw=1.4, label=name)
        if key in teacher:
            ax.axhline(teacher[key], color=colors["teacher"], ls="--", lw=1.0, label="teacher")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if total:
            ax.set_xlim(0, max(total.values()))
    for ax in axes[2:]:
        ax.set_xlabel("generator update")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def collapse_lab(method_a, method_b, cfg, iters, progress=gr.Progress()):
    """Train two methods side by side on ring-mix, streaming their samples and diversity curves.

    Each run reports every ``iters // 12`` updates: a :class:`DiversityMonitor` callback measures
    within-class diversity of 256 samples, and a second callback samples 512 points at fixed noise
    for the scatter and the mode coverage / KL against the teacher's mode histogram. Yields
    (scatter A, scatter B, curves, status).
    """
    from pdmd_lab.distill import distill
    from pdmd_lab.evaluate import DiversityMonitor

    if method_a == method_b:
        raise gr.Error("Pick two different methods.")
    specs = {method_a: _preset(method_a), method_b: _preset(method_b)}
    cfg = _float(cfg, "CFG", 0.0, MAX_CFG)
    iters = _int(iters, "generator updates each", 4, MAX_LAB_ITERS)
    totals = {name: _round_iters(iters, s, "generator updates") for name, s in specs.items()}
    configs = {name: make_config(s, cfg=cfg, iters=totals[name], init_iters=DISTILL_INIT_ITERS)
               for name, s in specs.items()}
    ds = get_dataset(FAMILY)
    labels = torch.arange(LAB_N) % ds.num_classes
    noise = torch.randn((LAB_N, *ds.shape), generator=torch.Generator().manual_seed(0))
    x_teacher = zoo.load(f"{FAMILY}/teacher", cfg=cfg).sample(labels, noise=noise)
    teacher_hist = metrics.mode_histogram(ds.gmm, x_teacher, labels)
    teacher_ref = {**DiversityMonitor(n=256).measure(ds, x_teacher[:256], labels[:256]),
                   **_lab_measure(ds, x_teacher, labels, teacher_hist)}

    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    histories: dict[str, list] = {name: [] for name in specs}
    latest: dict[str, tuple] = {}
    started: dict[str, threading.Thread] = {}

    def runner(name):
        monitor = DiversityMonitor(n=256, seed=0)

        def snapshot(info):
            if stop.is_set():
                raise _Stopped
            x = info["student"].sample(labels, noise=noise)
            rec = {"iter": int(info["iter"]), "phase": info.get("phase"),
                   **(monitor.history[-1] if monitor.history else {}), **_lab_measure(ds, x, labels, teacher_hist)}
            events.put(("step", name, rec, x))

        def run():
            try:
                every = max(1, totals[name] // 12)
                distill(configs[name], progress=False, callbacks=[monitor, snapshot], callback_every=every)
                events.put(("done", name))
            except _Stopped:
                events.put(("stopped", name))
            except Exception as e:  # shown in the page, not as a traceback
                events.put(("error", name, e))

        t = threading.Thread(target=run, daemon=True, name=f"collapse-lab {name}")
        started[name] = t
        t.start()

    def scatter(name):
        if name not in latest:
            return None
        rec, x = latest[name]
        fig = viz.scatter_figure({name: (x, labels)}, ds.gmm,  # the method's name fits the panel's width
                                 title=f"update {rec['iter']}/{totals[name]} · coverage {rec['coverage']:.2f} · "
                                       f"KL {rec['kl']:.3f}")
        fig.axes[0].title.set_color(lab_colors(specs)[name])  # the method's colour in the curves
        fig.axes[0].title.set_fontweight("bold")
        return fig

    a, b = specs
    progress(0, desc="fitting the starting network to the oracle")
    runner(a)  # b starts once a has reported (or finished): the starting network is fitted once, then shared
    done: set[str] = set()
    fresh: set[str] = set()  # methods with a snapshot not shown yet
    t0, last = time.perf_counter(), -math.inf  # the first snapshot is always shown
    gap = LAB_UPDATE_S
    try:
        while len(done) < 2:
            ev = events.get()
            kind, name = ev[0], ev[1]
            if kind == "error":
                raise gr.Error(f"Distillation of {name} failed: {ev[2]}")
            if kind in ("done", "stopped"):
                done.add(name)
            else:
                histories[name].append(ev[2])
                latest[name] = (ev[2], ev[3])
                fresh.add(name)
            if b not in started:
                runner(b)
            if len(done) < 2 and (time.perf_counter() - last < gap or not fresh):
                continue  # drawing costs more than a few updates: redraw at most every `gap` seconds
            its = {n: (histories[n][-1]["iter"] if histories[n] else 0) for n in specs}
            progress(sum(its.values()) / sum(totals.values()),
                     desc=" · ".join(f"{n} {its[n]}/{totals[n]}" for n in specs))
            status = " · ".join(f"**{n}** ({describe_spec(specs[n])}): update {its[n]}/{totals[n]}"
                                + (" ✓" if n in done else "") for n in specs)
            if len(done) == 2:
                status += f"  \ndone in {time.perf_counter() - t0:.0f} s; teacher: coverage " \
                          f"{teacher_ref['coverage']:.2f}, Vendi {teacher_ref['div_vendi']:.2f}"
            final = len(done) == 2
            drawn = time.perf_counter()
            yield (scatter(a) if a in fresh or final else gr.skip(), scatter(b) if b in fresh or final else gr.skip(),
                   lab_curves_figure(histories, teacher_ref, total=totals), status)
            fresh.clear()
            last = time.perf_counter()
            gap = max(LAB_UPDATE_S, last - drawn)  # the page's drawing (here and in Gradio) at most half the time
    finally:
        stop.set()

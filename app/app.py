"""pdmd_lab in the browser: teacher vs DMD vs Phased DMD side by side, phases, diversity, live distillation.

Thin: every number and figure comes from the library (``pdmd_lab.zoo``, ``metrics``, ``embed``, ``viz``,
``distill``). Models load once, at start-up; a family or model missing from ``assets/models`` is
skipped with a note. Run ``python -m app.app [--host H] [--port P]`` (default 127.0.0.1:7860).

Compare answers at once: its panels stream in as each is ready (the distilled students first, the
50-step teacher last, with a progress indicator), and the teacher's outputs are cached per
(family, class, seed, number of samples, CFG), so a repeated click only re-runs the students.

API endpoints (``gradio_client``): ``/generate``, ``/phases``, ``/trajectory``, ``/diversity``,
``/class_view``, ``/distill``, ``/collapse_lab``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from app import live  # noqa: E402
from app.live import MAX_DISTILL_ITERS, MAX_LAB_ITERS, collapse_lab, distill_live  # noqa: E402
from pdmd_lab import flow, metrics, viz, zoo  # noqa: E402
from pdmd_lab.data import get_dataset  # noqa: E402

FAMILIES = ("mnist", "ring-mix")  # preferred order; any other family with a teacher and a student follows
SEED_MAX = 2**31 - 1
MAX_SAMPLES = 64
MAX_CFG = 10.0
MAX_DIVERSITY_N = 512
MAX_CLASS_N = 128
TEACHER_STEPS = 50
TEACHER_CACHE_SIZE = 64
# The six Compare panels: (key, title). "teacher" and "teacher@4" are the family's teacher at 50 / 4 steps.
PANELS = (
    ("teacher", "Teacher, 50 steps"),
    ("teacher@4", "Teacher cut to 4 steps (no distillation)"),
    ("dmd-1s", "DMD, 1 step"),
    ("dmd2-sgts-4s", "DMD2-SGTS, 4 steps"),
    ("phased-dmd-4s4p", "Phased DMD, 4 steps / 4 phases"),
    ("dp-dmd-4s", "DP-DMD, 4 steps"),
)
# Hook for families whose students are named otherwise (e.g. the D-MMD discrete family): family ->
# its six (key, title) panels. A family not listed here uses PANELS when it has any of their
# students, else its teacher panels followed by its own shipped students in name order.
FAMILY_PANELS: dict[str, tuple] = {}
SAMPLER_API = ("sample", "with_steps", "num_classes", "shape", "nfe", "cfg")  # what Compare needs of a teacher
STUDENTS = ("phased-dmd-4s4p", "phased-dmd-4s2p", "dmd2-sgts-4s", "dp-dmd-4s", "dmd-1s")
DISTILL_METHODS = live.PRESETS  # label -> flat spec (method, steps, method options), as at import
LAB_DEFAULTS = ("dmd-1s", "phased-dmd-4s4p")


# Models ----------------------------------------------------------------------------------------

def shipped_families(available=None) -> list[str]:
    """Families with a teacher and at least one shipped student, ``FAMILIES`` first."""
    available = set(zoo.list_models() if available is None else available)
    fams = {n.split("/")[0] for n in available if n.count("/") == 1 and n.endswith("/teacher")}
    fams = {f for f in fams if any(n.startswith(f"{f}/") and n.split("/")[1] not in ("teacher", "classifier")
                                   for n in available if n.count("/") == 1)}
    return [f for f in FAMILIES if f in fams] + sorted(fams - set(FAMILIES))


class Zoo:
    """The shipped models, loaded once: ``models[family][key]`` and the notes about what is missing."""

    def __init__(self, families=None):
        self.models: dict[str, dict] = {}
        self.notes: list[str] = []
        self.classifiers: dict = {}
        available = set(zoo.list_models())
        for family in (shipped_families(available) if families is None else families):
            if f"{family}/teacher" not in available:
                self.notes.append(f"family **{family}** skipped: no teacher in assets/models")
                continue
            try:
                loaded = {"teacher": zoo.load(f"{family}/teacher", steps=TEACHER_STEPS)}
            except Exception as e:  # a broken teacher folder: skip the family, keep the app up
                self.notes.append(f"family **{family}** skipped: teacher failed to load ({e})")
                continue
            missing = [a for a in SAMPLER_API if not hasattr(loaded["teacher"], a)]
            if missing:  # e.g. a family whose teacher is not a TeacherSampler yet
                self.notes.append(f"family **{family}** skipped: its teacher lacks {', '.join(missing)}")
                continue
            shipped = sorted(n.split("/")[1] for n in available
                             if n.startswith(f"{family}/") and n.count("/") == 1
                             and n.split("/")[1] not in ("teacher", "classifier"))
            for key in [k for k in STUDENTS if k not in shipped] if family in FAMILIES else []:
                self.notes.append(f"`{family}/{key}` is not built yet: its panel stays empty")
            for key in shipped:
                try:
                    loaded[key] = zoo.load(f"{family}/{key}")
                except Exception as e:
                    self.notes.append(f"`{family}/{key}` failed to load ({e})")
            self.models[family] = loaded
            with torch.no_grad():  # warm-up: the first call of a network is slow; keep it out of the timings
                for key, m in loaded.items():
                    try:
                        (m.with_steps(1) if key == "teacher" else m).sample([0])
                    except Exception:  # a model that cannot sample one item still gets its panel's error
                        pass
            if _kind(family) == "image":
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

    def students(self, family: str) -> list[str]:
        return [k for k in self.family(family) if k != "teacher"]

    def sampler(self, family: str, key: str, cfg: float | None = None):
        """The model of ``key`` in ``family`` (teachers at ``cfg``), or None when it is not built."""
        models = self.family(family)
        if key.startswith("teacher"):
            steps = int(key.split("@")[1]) if "@" in key else TEACHER_STEPS
            return models["teacher"].with_steps(steps, cfg)
        return models.get(key)

    def panels(self, family: str) -> tuple:
        """The six Compare panels ``(key, title)`` of ``family`` (see ``FAMILY_PANELS``)."""
        if family in FAMILY_PANELS:
            return tuple(FAMILY_PANELS[family])[:6]
        models = self.family(family)
        if any(k in models for k, _ in PANELS[2:]):
            return PANELS
        own = [(k, k) for k in self.students(family)][:4]
        return PANELS[:2] + tuple(own) + (("", "(no model)"),) * (4 - len(own))


_ZOO: Zoo | None = None
_ZOO_LOCK = threading.Lock()


def get_zoo() -> Zoo:
    global _ZOO
    with _ZOO_LOCK:
        if _ZOO is None:
            _ZOO = Zoo()
        return _ZOO


class TeacherCache:
    """Teacher outputs per request key, least recently used first out.

    ``get_or_compute(key, fn)`` returns ``(value, cached)``. Two requests for one key at once compute
    it once: the second waits for the first.
    """

    def __init__(self, maxsize: int = TEACHER_CACHE_SIZE):
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._pending: dict = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def get_or_compute(self, key, fn):
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    return self._data[key], True
                event = self._pending.get(key)
                if event is None:
                    event = self._pending[key] = threading.Event()
                    break
            event.wait()  # another request computes it; take its result (or compute it if that one failed)
        try:
            value = fn()
            with self._lock:
                self._data[key] = value
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)
            return value, False
        finally:
            with self._lock:
                self._pending.pop(key, None)
            event.set()


TEACHER_CACHE = TeacherCache()


# Validation and helpers --------------------------------------------------------------------------

_int, _float = live._int, live._float  # one validation of numbers for both tabs


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


def _image_panel(family: str, title: str, x: torch.Tensor, labels, scale: int = 3) -> np.ndarray:
    n = len(x)
    grid = viz.image_grid_array(x, max(1, math.ceil(math.sqrt(n))))
    return np.repeat(np.repeat(grid, scale, 0), scale, 1)  # nearest-neighbour upscale for the page


def _points_panel(family: str, title: str, x: torch.Tensor, labels) -> np.ndarray:
    return figure_array(viz.scatter_figure({title: (x, labels)}, get_dataset(family).gmm))


def _empty_panel(size: int = 96) -> np.ndarray:
    return np.full((size, size, 3), 235, dtype=np.uint8)


# How a family's samples become a panel, by its dataset's ``kind``. A family of another kind (the
# D-MMD discrete family) joins Compare by registering its renderer: ``RENDERERS[kind] = fn`` with
# ``fn(family, title, samples, labels) -> (H, W, 3) uint8``.
RENDERERS = {"2d": _points_panel, "image": _image_panel}


def _kind(family: str) -> str | None:
    try:
        return get_dataset(family).kind
    except Exception:  # a family whose data the dataset registry does not know
        return None


def _panel(family: str, title: str, x, labels) -> np.ndarray:
    render = RENDERERS.get(_kind(family))
    if render is None:
        raise gr.Error(f"No panel renderer for family {family!r} (data kind {_kind(family)!r}); "
                       f"register one in app.app.RENDERERS.")
    return render(family, title, x, labels)


def _diversity(x: torch.Tensor) -> float | None:
    if not isinstance(x, torch.Tensor) or len(x) < 2:
        return None
    return metrics.pairwise_distance(x.reshape(len(x), -1).float())


# Compare -----------------------------------------------------------------------------------------

def _class_key(class_choice) -> str:
    return "all" if class_choice in (None, "", "all") else str(int(float(class_choice)))


def _teacher_key(family: str, key: str, class_choice, seed: int, n: int, cfg: float) -> tuple:
    return family, key, _class_key(class_choice), int(seed), int(n), round(float(cfg), 6)


def teacher_output(family: str, key: str, class_choice, seed: int, n: int, cfg: float):
    """The teacher's samples for a request, from :data:`TEACHER_CACHE` or computed (and cached).

    Returns ``(entry, cached)``, ``entry = {"x", "ms", "nfe", "labels"}``.
    """
    z = get_zoo()
    model = z.sampler(family, key, cfg)
    labels = _labels(class_choice, n, model.num_classes)
    cache_key = _teacher_key(family, key, class_choice, seed, n, cfg)

    def compute():
        noise = _noise(seed, n, model.shape)
        t0 = time.perf_counter()
        x = model.sample(labels, seed=seed, noise=noise)
        return {"x": x, "ms": 1000 * (time.perf_counter() - t0), "nfe": model.nfe, "labels": labels}

    return TEACHER_CACHE.get_or_compute(cache_key, compute)


def _caption(title: str, nfe, ms: float, teacher_ms: float | None, x, note: str = "") -> str:
    div = _diversity(x)
    speed = f" · {teacher_ms / ms:.1f}× vs 50-step teacher" if teacher_ms else ""
    return (f"**{title}**  \nNFE {nfe} · {ms:.0f} ms{speed}{note}  \n"
            f"pairwise diversity {'n/a (1 sample)' if div is None else f'{div:.3f}'}")


def generate(family: str, class_choice, seed, num_samples, cfg, progress=gr.Progress()):
    """Six panels from the same noise: teacher (50 steps), teacher (4 steps), DMD, DMD2-SGTS, Phased DMD, DP-DMD.

    A generator: the distilled students' panels come first, each as soon as it is sampled, then
    the 4-step teacher, then the 50-step teacher, whose caption counts the seconds while it runs
    (its outputs are cached per (family, class, seed, n, CFG), so a repeated click shows it at once).
    Every update holds 6 images, 6 captions (NFE, milliseconds, speedup over the 50-step teacher,
    pairwise diversity) and a summary; the last one holds them all.
    """
    z = get_zoo()
    z.family(family)
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, MAX_SAMPLES)
    cfg = _float(cfg, "teacher CFG", 0.0, MAX_CFG)
    teacher = z.models[family]["teacher"]
    labels = _labels(class_choice, n, teacher.num_classes)
    noise = _noise(seed, n, teacher.shape)
    panels = z.panels(family)
    images: list = [None] * 6
    captions = [f"**{title}**  \nwaiting…" for _, title in panels]
    results: dict[int, tuple] = {}  # panel -> (title, nfe, ms, x, note)
    what = "all classes" if class_choice in (None, "", "all") else f"class {class_choice}"
    summary = (f"{family}, {what}, seed {seed}, {n} sample(s), teacher CFG {cfg:g}; every panel starts from the "
               "same noise. Speedup = teacher (50 steps) time / model time.")

    def update(changed=()):
        """Only the changed panels travel; the caller's last update sends everything."""
        imgs = [images[i] if i in changed else gr.skip() for i in range(6)]
        return (*imgs, *captions, summary)

    yield (*[gr.update(value=None, label=title) for _, title in panels], *captions, summary)
    # Cached teacher panels first (instant), then the students, then the teachers still to compute.
    ready = [i for i, (k, _) in enumerate(panels) if k.startswith("teacher")
             and _teacher_key(family, k, class_choice, seed, n, cfg) in TEACHER_CACHE]
    order = ready + [i for i, (k, _) in enumerate(panels) if not k.startswith("teacher")]
    order += [i for i, (k, _) in enumerate(panels) if k.startswith("teacher@") and i not in ready]
    order += [i for i, (k, _) in enumerate(panels) if k == "teacher" and i not in ready]
    for i in order:
        key, title = panels[i]
        model = z.sampler(family, key, cfg) if key else None
        if model is None:
            images[i] = _empty_panel()
            captions[i] = f"**{title}**: not available" + (f" (`{family}/{key}` is not built yet)" if key else "")
            yield update([i])
            continue
        if key.startswith("teacher"):
            estimate = None
            if key == "teacher" and "teacher@4" in {k for k, _ in panels}:
                j = [k for k, _ in panels].index("teacher@4")
                if j in results:  # same network and batch: time scales with the steps
                    estimate = results[j][2] / 4 * TEACHER_STEPS / 1000
            box: dict = {}
            worker = threading.Thread(target=lambda: box.update(
                out=_safe(teacher_output, family, key, class_choice, seed, n, cfg)), daemon=True)
            t0 = time.perf_counter()
            worker.start()
            worker.join(0.25)
            while worker.is_alive():
                el = time.perf_counter() - t0
                of = f" of about {estimate:.0f} s" if estimate else ""
                bar = (f'<progress value="{min(el / estimate, 0.99):.2f}" max="1" style="width: 100%"></progress>'
                       if estimate else "")
                captions[i] = f"**{title}**  \ncomputing: {el:.1f} s{of} (NFE {model.nfe}; cached afterwards)\n\n{bar}"
                progress(min(0.99, el / estimate) if estimate else None, desc=f"{title}: {el:.0f} s{of}")
                yield update()
                worker.join(0.5)
            out = box["out"]
            if isinstance(out, Exception):
                raise out
            (entry, cached) = out
            x, ms = entry["x"], entry["ms"]
            note = " (cached: computed for an earlier request)" if cached else ""
            results[i] = (title, entry["nfe"], ms, x, note)
        else:
            t0 = time.perf_counter()
            x = model.sample(labels, seed=seed, noise=noise)
            ms = 1000 * (time.perf_counter() - t0)
            results[i] = (title, model.nfe, ms, x, "")
        if key.startswith("teacher"):  # the rendered panel is kept with the cached samples
            images[i] = entry.get("panel") if entry.get("panel_title") == title else None
            if images[i] is None:
                images[i] = entry["panel"] = _panel(family, title, x, labels)
                entry["panel_title"] = title
        else:
            images[i] = _panel(family, title, x, labels)
        teacher_ms = next((r[2] for j, r in results.items() if panels[j][0] == "teacher"), None)
        for j, (t_, nfe, ms_, x_, note) in results.items():
            captions[j] = _caption(t_, nfe, ms_, teacher_ms, x_, note)
        yield update([i])
    yield (*images, *captions, summary)


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # re-raised in the request's thread
        return e


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


ANIMATION_DIR = Path(tempfile.gettempdir()) / "pdmd_lab_app"


def trajectory(family: str, student: str, class_choice, seed, num_samples):
    """Trajectories of a student and of the teacher cut to 4 steps, from the same noise, then an
    animation of the student's (GIF: samples moving from noise to data, coloured by expert).

    A generator: the two figures first, the animation (a few seconds to render) after them.
    """
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
    figs, trajs = [], []
    for m in (model, teacher):
        _, traj = m.sample(labels, seed=seed, noise=noise, return_trajectory=True)
        ts = m.step_times
        experts = [m.expert_index(float(t)) for t in ts[:-1]]
        trajs.append((traj, experts, ts))
        figs.append(viz.trajectory_figure(traj, experts, labels=labels, dataset=family, step_times=ts))
    yield figs[0], figs[1], gr.skip()
    traj, experts, ts = trajs[0]
    anim = viz.trajectory_animation(traj, experts, labels=labels, dataset=family, step_times=ts,
                                    title=f"{family}/{student}")
    ANIMATION_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkstemp(suffix=".gif", prefix="trajectory_", dir=ANIMATION_DIR)[1])
    viz.animation_to_gif(anim, path)
    yield figs[0], figs[1], str(path)


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
        if key.startswith("teacher"):  # shared with Compare's cache (class "all", same seed and n)
            entry, _ = teacher_output(family, key, "all", seed, n, teacher.cfg)
            x, ms = entry["x"], entry["ms"]
        else:
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

    ``n_per_method`` samples of the class per model (the teacher's from :data:`TEACHER_CACHE`),
    embedded (classifier features for images, the points themselves in 2D), projected together
    for images (PCA or t-SNE), one panel per model with its spread / coverage / Vendi measured in
    feature space against the teacher's.
    """
    from pdmd_lab.embed import project

    z = get_zoo()
    z.family(family)
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
    lines = ["| model | spread vs teacher | coverage of teacher | Vendi |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['spread']:.2f} | {v['coverage']:.2f} | {v['Vendi']:.2f} |" for k, v in scores.items()]
    if skipped:
        lines.append(f"\nSkipped (not built yet): {', '.join(skipped)}")
    lines.append(f"\nTeacher samples {'from the cache' if cached else 'computed now (cached for next time)'}.")
    return fig, "\n".join(lines)


# Layout ----------------------------------------------------------------------------------------

def build_app() -> gr.Blocks:
    """The Gradio Blocks of the app (models load here, once)."""
    z = get_zoo()
    families = z.families
    default_family = "mnist" if "mnist" in families else (families[0] if families else None)
    default_panels = z.panels(default_family) if default_family else PANELS
    default_cfg = z.models[default_family]["teacher"].cfg if default_family else 3.0
    max_classes = max((z.models[f]["teacher"].num_classes for f in families), default=10)
    class_choices = ["all"] + [str(c) for c in range(max_classes)]
    shipped = {k for f in families for k in z.students(f)}
    students = [k for k in STUDENTS if k in shipped] + sorted(shipped - set(STUDENTS))
    notes = "  \n".join(f"- {n}" for n in z.notes)
    lab_choices = list(live.method_presets())  # the registry as it is now
    lab_a, lab_b = [m if m in lab_choices else lab_choices[min(i, len(lab_choices) - 1)]
                    for i, m in enumerate(LAB_DEFAULTS)]

    with gr.Blocks(title="pdmd_lab: Phased DMD explorer") as demo:
        gr.Markdown("# pdmd_lab: few-step distillation, side by side\n"
                    "Teacher (50 Euler steps) vs DMD vs DMD2-SGTS vs **Phased DMD** vs DP-DMD, same noise, same class.")
        if notes:
            gr.Markdown(f"<details><summary>Model notes</summary>\n\n{notes}\n</details>")
        with gr.Tab("Compare", elem_id="tab-compare"):
            with gr.Row():
                family = gr.Dropdown(families, value=default_family, label="family")
                klass = gr.Dropdown(class_choices, value="all", label="class", allow_custom_value=True,
                                    elem_id="class-dd")
                seed = gr.Number(0, label=f"seed (0..{SEED_MAX})", precision=0, elem_id="seed-num")
                count = gr.Number(16, label=f"number of samples (1..{MAX_SAMPLES})", precision=0,
                                  elem_id="count-num")
                cfg = gr.Number(default_cfg, label="teacher CFG (0..10)")
            btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            gr.Markdown("Panels appear as each model finishes: the distilled students first (well under a second), "
                        "the 50-step teacher last. The teacher's samples are cached per family, class, seed, number "
                        "and CFG: clicking again shows them at once.")
            images, captions = [], []
            for row in (range(0, 3), range(3, 6)):
                with gr.Row(equal_height=False):
                    for i in row:
                        with gr.Column(min_width=200):
                            images.append(gr.Image(label=default_panels[i][1], type="numpy", format="png",
                                                   interactive=False, elem_id=f"panel-{i}", elem_classes=["panel"]))
                            captions.append(gr.Markdown(elem_id=f"caption-{i}"))
            summary = gr.Markdown(elem_id="summary")
            btn.click(generate, [family, klass, seed, count, cfg], [*images, *captions, summary],
                      api_name="generate", show_progress_on=[images[0]])

        with gr.Tab("Phases", elem_id="tab-phases"):
            with gr.Row():
                p_steps = gr.Number(4, label="steps", precision=0)
                p_phases = gr.Number(4, label="phases (must divide steps)", precision=0)
                p_shift = gr.Number(1.0, label="time shift")
                p_btn = gr.Button("Show phases", variant="primary")
            p_fig = gr.Plot(label="phases on the log-SNR axis")
            s_fig = gr.Plot(label="SNR and log-SNR")
            p_text = gr.Markdown()
            p_btn.click(phases, [p_steps, p_phases, p_shift], [p_fig, s_fig, p_text], api_name="phases")
            gr.Markdown("### Trajectories: a student vs the teacher cut to 4 steps (same noise), and an animation\n"
                        "The animation moves the student's samples from noise to data step by step, each step in the "
                        "colour of the expert that takes it.")
            with gr.Row():
                t_family = gr.Dropdown(families, value=default_family, label="family")
                t_student = gr.Dropdown(students, value="phased-dmd-4s4p" if "phased-dmd-4s4p" in students else
                                        (students[0] if students else None), label="student")
                t_class = gr.Dropdown(class_choices, value="all", label="class", allow_custom_value=True)
                t_seed = gr.Number(0, label="seed", precision=0)
                t_n = gr.Number(6, label="samples (1..32)", precision=0)
                t_btn = gr.Button("Show trajectories", variant="primary", elem_id="trajectory-btn")
            with gr.Row():
                t_fig_s = gr.Plot(label="student")
                t_fig_t = gr.Plot(label="teacher, 4 steps")
            t_anim = gr.Image(label="the student's trajectory, animated (noise → data, coloured by expert)",
                              type="filepath", format="gif", interactive=False, elem_id="trajectory-anim")
            t_btn.click(trajectory, [t_family, t_student, t_class, t_seed, t_n], [t_fig_s, t_fig_t, t_anim],
                        api_name="trajectory")

        with gr.Tab("Diversity", elem_id="tab-diversity"):
            with gr.Row():
                d_family = gr.Dropdown(families, value=default_family, label="family")
                d_methods = gr.CheckboxGroup(["teacher", "teacher@4", *students],
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
            gr.Markdown("### Within one class: the teacher's cloud against each model's\n"
                        "Collapse happens *inside* a class: a collapsed student covers a small part of the teacher's "
                        "cloud. Each panel gives the model's spread (mean pairwise distance / the teacher's), its "
                        "coverage of the teacher's samples and its Vendi score, all in feature space.")
            with gr.Row():
                c_family = gr.Dropdown(families, value=default_family, label="family")
                c_methods = gr.CheckboxGroup(["teacher@4", *students],
                                             value=[m for m in ("dmd-1s", "dmd2-sgts-4s", "phased-dmd-4s4p",
                                                                "phased-dmd-4s2p") if m in students],
                                             label="models (against the 50-step teacher)")
            with gr.Row():
                c_class = gr.Dropdown([str(c) for c in range(max_classes)], value="3", label="class")
                c_n = gr.Number(32, label=f"samples per model (6..{MAX_CLASS_N})", precision=0)
                c_proj = gr.Radio(["pca", "tsne"], value="pca", label="projection (images)")
                c_seed = gr.Number(0, label="seed", precision=0)
                c_btn = gr.Button("Compare within the class", variant="primary")
            c_fig = gr.Plot(label="within one class")
            c_table = gr.Markdown()
            c_btn.click(class_view, [c_family, c_methods, c_class, c_n, c_proj, c_seed], [c_fig, c_table],
                        api_name="class_view")

        with gr.Tab("Distill live", elem_id="tab-distill"):
            gr.Markdown("Distill a **ring-mix** student from the exact oracle teacher, live (CPU, a few seconds "
                        "per 100 iterations).")
            with gr.Row():
                l_method = gr.Dropdown(lab_choices, value=lab_b, label="method")
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

        with gr.Tab("Collapse lab", elem_id="tab-lab"):
            gr.Markdown("Train **two methods side by side** on ring-mix (exact oracle teacher, CFG as set) and watch "
                        "mode collapse happen: samples at fixed noise, and per method the mode coverage, the KL of "
                        "its mode histogram against the teacher's and its within-class diversity "
                        "(`DiversityMonitor`), measured while it trains. The teacher's values are dashed.")
            with gr.Row():
                m_a = gr.Dropdown(lab_choices, value=lab_a, label="method A", elem_id="lab-a")
                m_b = gr.Dropdown(lab_choices, value=lab_b, label="method B", elem_id="lab-b")
                m_cfg = gr.Number(3.0, label="CFG (0..10)")
                m_iters = gr.Number(120, label=f"generator updates each (4..{MAX_LAB_ITERS})", precision=0,
                                    elem_id="lab-iters")
                m_btn = gr.Button("Train both", variant="primary", elem_id="lab-btn")
            m_status = gr.Markdown(elem_id="lab-status")
            with gr.Row():
                m_scatter_a = gr.Plot(label="method A", elem_id="lab-scatter-a")
                m_scatter_b = gr.Plot(label="method B", elem_id="lab-scatter-b")
            m_curves = gr.Plot(label="diversity and coverage while training", elem_id="lab-curves")
            m_btn.click(collapse_lab, [m_a, m_b, m_cfg, m_iters], [m_scatter_a, m_scatter_b, m_curves, m_status],
                        api_name="collapse_lab")
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

"""pdmd_lab in the browser: teacher vs DMD vs Phased DMD side by side, phases, diversity, live distillation.

Thin: every number and figure comes from the library (``pdmd_lab.zoo``, ``metrics``, ``embed``, ``viz``,
``distill``). Models load once, at start-up; a family or model missing from ``assets/models`` is
skipped with a note. Run ``python -m app.app [--host H] [--port P]`` (default 127.0.0.1:7860).

Compare answers at once: its panels stream in as each is ready (the distilled students first, the
50-step teacher last, with a progress indicator), and the teacher's outputs are cached per
(family, class, seed, number of samples, CFG), so a repeated click only re-runs the students.

Discrete families (masked diffusion, dataset kind ``"tokens"``: ``ring-mix-tokens``, ``mnist-binary``) are
in Compare too, with a step count ``k`` picked among their shipped D-MMD students': the teacher at its
full step count and at ``k`` and ``4k`` steps, the ``k``-step D-MMD student with and without its noise
input, and data. The panels come from the D-MMD recipes and what is shipped, so a newly shipped student
appears without code changes. For ``ring-mix-tokens`` each caption gives the exact TV of the samples'
joint to the true joint. The other tabs are for the continuous families.

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
from pdmd_lab.discrete.oracle import TokenOracle  # noqa: E402
from pdmd_lab.sampling import get_sampler  # noqa: E402

FAMILIES = ("mnist", "ring-mix")  # preferred order; any other family with a teacher and a student follows
SEED_MAX = 2**31 - 1
MAX_SAMPLES = 64
MAX_PAIR_SAMPLES = 8192  # token pairs (ring-mix-tokens): a joint histogram on 32 x 32 cells needs thousands
DEFAULT_PAIR_SAMPLES = 2048
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
# Discrete families: the default D-MMD step count k (else the k with the most shipped students, the smallest
# on a tie), and how a method's name reads in a panel title.
DEFAULT_STEPS = {"ring-mix-tokens": 2}
METHOD_TITLES = {"d-mmd": "D-MMD"}
SAMPLER_API = ("sample", "with_steps", "num_classes", "shape", "nfe", "cfg")  # what Compare needs of a teacher
STUDENTS = ("phased-dmd-4s4p", "phased-dmd-4s2p", "dmd2-sgts-4s", "dp-dmd-4s", "dmd-1s")
DISTILL_METHODS = live.PRESETS  # label -> flat spec (method, steps, method options), as at import
LAB_DEFAULTS = ("dmd-1s", "phased-dmd-4s4p")


# Models ----------------------------------------------------------------------------------------

def has_teacher(family: str, available) -> bool:
    """Whether ``family`` has a teacher: a shipped one, or an exact masked-diffusion oracle
    (``ring-mix-tokens/teacher``, which ``zoo.list_models`` does not list)."""
    from pdmd_lab.discrete.evaluate import masked_spec

    return f"{family}/teacher" in available or masked_spec(f"{family}/teacher", zoo.ASSETS) is not None


def shipped_families(available=None) -> list[str]:
    """Families with a teacher and at least one shipped student, ``FAMILIES`` first."""
    available = set(zoo.list_models() if available is None else available)
    fams = {n.split("/")[0] for n in available if n.count("/") == 1
            and n.split("/")[1] not in ("teacher", "classifier")}
    fams = {f for f in fams if has_teacher(f, available)}
    return [f for f in FAMILIES if f in fams] + sorted(fams - set(FAMILIES))


def _recipe_students(family: str) -> dict[str, dict]:
    """``name -> recipe`` of the D-MMD students the discrete recipes define for ``family`` (shipped or not)."""
    from pdmd_lab.discrete.recipes import RECIPES

    return {n.split("/", 1)[1]: r for n, r in RECIPES.items()
            if n.startswith(f"{family}/") and r.get("kind") == "student"}


def _teacher_steps(family: str) -> int:
    """The teacher's full step count: 50 Euler steps, or the discrete comparison's (``FULL_STEPS``, 100)."""
    if _discrete(family):
        from pdmd_lab.discrete.evaluate import FULL_STEPS

        return FULL_STEPS
    return TEACHER_STEPS


def _student_title(method: str, steps: int, noise_dim) -> str:
    title = f"{METHOD_TITLES.get(method, method)}, {steps} step{'s' if steps != 1 else ''}"
    return title + (", without the noise input" if noise_dim == 0 else "")


class Zoo:
    """The shipped models, loaded once: ``models[family][key]`` and the notes about what is missing."""

    def __init__(self, families=None):
        self.models: dict[str, dict] = {}
        self.notes: list[str] = []
        self.classifiers: dict = {}
        available = set(zoo.list_models())
        if families is None:  # students shipped before their teacher (e.g. mnist-binary's): say so
            with_students = {n.split("/")[0] for n in available if n.count("/") == 1
                             and n.split("/")[1] not in ("teacher", "classifier")}
            for family in sorted(with_students - set(shipped_families(available))):
                self.notes.append(f"family **{family}** skipped: no teacher in assets/models")
        for family in (shipped_families(available) if families is None else families):
            if not has_teacher(family, available):
                self.notes.append(f"family **{family}** skipped: no teacher in assets/models")
                continue
            try:  # masked-diffusion teachers: CFG 1 (zoo.load's default for them), full = evaluate's FULL_STEPS
                loaded = {"teacher": zoo.load(f"{family}/teacher", steps=_teacher_steps(family))}
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
            expected = STUDENTS if family in FAMILIES else _recipe_students(family) if _discrete(family) else ()
            for key in [k for k in expected if k not in shipped]:
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

    def continuous_families(self) -> list[str]:
        """The families of the tabs besides Compare (flow-matching teachers: points and images)."""
        return [f for f in self.models if not _discrete(f)]

    def full_steps(self, family: str) -> int:
        """The teacher's full step count (50 for flow matching, 100 for masked diffusion)."""
        return int(self.family(family)["teacher"].num_steps)

    def sampler(self, family: str, key: str, cfg: float | None = None):
        """The model of ``key`` in ``family`` (teachers at ``cfg``), or None when it is not built."""
        models = self.family(family)
        if key.startswith("teacher"):
            steps = int(key.split("@")[1]) if "@" in key else self.full_steps(family)
            return models["teacher"].with_steps(steps, cfg)
        return models.get(key)

    def step_choices(self, family: str) -> list[int]:
        """Discrete families: the step counts ``k`` of the shipped students (Compare's step choice); else []."""
        if not _discrete(family):
            return []
        return sorted({int(self.family(family)[k].num_steps) for k in self.students(family)})

    def default_steps(self, family: str) -> int | None:
        choices = self.step_choices(family)
        if not choices:
            return None
        if DEFAULT_STEPS.get(family) in choices:
            return DEFAULT_STEPS[family]
        count = {k: sum(int(self.models[family][s].num_steps) == k for s in self.students(family)) for k in choices}
        return max(choices, key=lambda k: (count[k], -k))

    def _students_at(self, family: str, steps: int) -> list[tuple[str, str, bool]]:
        """``(key, title, has noise input)`` of the ``steps``-step students: shipped ones and the recipes' others."""
        models = self.family(family)
        out = {}
        for key, r in _recipe_students(family).items():
            if int(r["steps"]) == steps:
                out[key] = (key, _student_title(r["method"], steps, r.get("noise_dim")), r.get("noise_dim") != 0)
        for key in self.students(family):
            m = models[key]
            if int(m.num_steps) == steps:
                noise = m.meta.get("options", {}).get("noise_dim")
                out[key] = (key, _student_title(m.meta.get("method", key), steps, noise), noise != 0)
        return list(out.values())

    def panels(self, family: str, steps: int | None = None) -> tuple:
        """The six Compare panels ``(key, title)`` of ``family`` (see ``FAMILY_PANELS``); discrete
        families at ``steps`` (default :meth:`default_steps`): the teacher at full, ``k`` and ``4k`` steps,
        the ``k``-step D-MMD student with and without its noise input, and data."""
        if family in FAMILY_PANELS:
            return tuple(FAMILY_PANELS[family])[:6]
        models = self.family(family)
        if _discrete(family):
            k = self.default_steps(family) if steps is None else int(steps)
            students = self._students_at(family, k)
            noisy = [s[:2] for s in students if s[2]] or [("", _student_title("d-mmd", k, 1))]
            plain = [s[:2] for s in students if not s[2]] or [("", _student_title("d-mmd", k, 0))]
            full = self.full_steps(family)
            return (("teacher", f"Teacher, {full} steps"),
                    (f"teacher@{k}", f"Teacher cut to {k} step{'s' if k != 1 else ''} (no distillation)"),
                    noisy[0], plain[0], (f"teacher@{4 * k}", f"Teacher, {4 * k} steps"), ("data", _data_title(family)))
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


def _initial(model, seed: int, n: int) -> torch.Tensor:
    """The seeded initial state of ``model``'s sampler: Gaussian noise (flow matching, equal to
    :func:`_noise`) or all tokens masked (masked diffusion)."""
    spec = get_sampler(getattr(model, "sampler", "euler"))
    return spec.initial(model.shape, n, torch.Generator().manual_seed(seed), "cpu")


def _sample_limits(family: str) -> tuple[int, int]:
    """``(most, default)`` number of samples in Compare: thousands for token pairs (a joint histogram), else 64."""
    ds = get_dataset(family)
    if ds.kind == "tokens" and len(ds.shape) == 1:
        return MAX_PAIR_SAMPLES, DEFAULT_PAIR_SAMPLES
    return MAX_SAMPLES, 16


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


def _tokens_panel(family: str, title: str, x: torch.Tensor, labels) -> np.ndarray:
    """Masked-diffusion samples: the joint histogram of token pairs, or binary images as a grid."""
    from pdmd_lab.discrete import viz as dviz
    from pdmd_lab.discrete.metrics import to_images

    if x.ndim == 2:
        fig = dviz.joint_figure({"": (x, labels)}, family, true_joint=False)
        fig.suptitle("")  # the panel's label names the model (and would hide a title at the top)
        fig.axes[0].set_xlabel(f"joint of the two tokens, {len(x)} samples", fontsize=8)
        fig.set_size_inches(3.6, 3.6)
        return figure_array(fig)
    return _image_panel(family, title, to_images(x), labels)


def _empty_panel(size: int = 96) -> np.ndarray:
    return np.full((size, size, 3), 235, dtype=np.uint8)


# How a family's samples become a panel, by its dataset's ``kind``: ``RENDERERS[kind] = fn`` with
# ``fn(family, title, samples, labels) -> (H, W, 3) uint8`` (the discrete D-MMD families: "tokens").
RENDERERS = {"2d": _points_panel, "image": _image_panel, "tokens": _tokens_panel}


def _kind(family: str) -> str | None:
    try:
        return get_dataset(family).kind
    except Exception:  # a family whose data the dataset registry does not know
        return None


def _discrete(family: str) -> bool:
    """Masked-diffusion families (D-MMD): Compare only, with a step choice."""
    return _kind(family) == "tokens"


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


def _diversity_line(family: str, x, labels) -> str:
    div = _diversity(x)
    return f"pairwise diversity {'n/a (1 sample)' if div is None else f'{div:.3f}'}"


def _token_joint(family: str):
    """The exact joint of a token family (:data:`pdmd_lab.discrete.teacher.ORACLES`), or None."""
    from pdmd_lab.discrete.teacher import ORACLES

    return ORACLES[family](get_dataset(family).vocab_size) if family in ORACLES else None


def token_tv(family: str, x: torch.Tensor, labels) -> float:
    """Exact TV of the samples' joint histogram to the true joint, per class, weighted by class counts."""
    from pdmd_lab.discrete.metrics import joint_distances

    return joint_distances(x, labels, _token_joint(family))["tv"]


def _tokens_line(family: str, x, labels) -> str:
    """Token pairs with an exact joint: the TV to it; binary images: the Hamming diversity."""
    from pdmd_lab.discrete.metrics import hamming_diversity

    if _token_joint(family) is not None:
        return f"TV to the true joint **{token_tv(family, x, labels):.3f}** (lower is better)"
    return f"Hamming diversity {'n/a (1 sample)' if len(x) < 2 else f'{hamming_diversity(x):.3f}'}"


# The number under each Compare panel, by the dataset's ``kind``: ``fn(family, samples, labels) -> str``.
MEASURES = {"2d": _diversity_line, "image": _diversity_line, "tokens": _tokens_line}


def _measure(family: str, x, labels) -> str:
    return MEASURES.get(_kind(family), _diversity_line)(family, x, labels)


def tv_floor(family: str, labels) -> float | None:
    """The TV that exact draws give at these labels' class counts (sampling noise alone), or None."""
    from pdmd_lab.discrete.metrics import tv_noise_floor

    joint = _token_joint(family)
    if joint is None:
        return None
    labels = torch.as_tensor(labels)
    counts = {int(c): int((labels == c).sum()) for c in torch.unique(labels)}
    return sum(tv_noise_floor(joint.table(c), m) * m for c, m in counts.items()) / len(labels)


def _data_title(family: str) -> str:
    return ("Data: exact draws from the true joint" if _token_joint(family) is not None
            else "Data: training samples")


def data_samples(family: str, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Data of the labels' classes (exact draws for the toy), seeded: the reference panel of discrete families."""
    ds = get_dataset(family)
    g = torch.Generator().manual_seed(int(seed))
    out = torch.empty((len(labels), *ds.shape), dtype=torch.long)
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c)[:, 0]
        out[rows] = ds.sample(len(rows), seed=g, labels=int(c))[0].long()
    return out


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
        noise = _initial(model, seed, n)
        t0 = time.perf_counter()
        x = model.sample(labels, seed=seed, noise=noise)
        return {"x": x, "ms": 1000 * (time.perf_counter() - t0), "nfe": model.nfe, "labels": labels}

    return TEACHER_CACHE.get_or_compute(cache_key, compute)


def _caption(title: str, nfe, ms: float, teacher_ms: float | None, measure: str, note: str = "",
             full_steps: int = TEACHER_STEPS) -> str:
    speed = f" · {teacher_ms / ms:.1f}× vs {full_steps}-step teacher" if teacher_ms else ""
    cost = "no network" if nfe is None else f"NFE {nfe}"
    return f"**{title}**  \n{cost} · {ms:.0f} ms{speed}{note}  \n{measure}"


def _steps_choice(z: Zoo, family: str, steps) -> int | None:
    """The validated D-MMD step count of a request: one of the family's shipped ``k``, None for others."""
    choices = z.step_choices(family)
    if not choices:
        if steps not in (None, ""):
            raise gr.Error(f"D-MMD steps apply to the discrete families only; {family!r} has none (got {steps!r}).")
        return None
    if steps in (None, ""):
        return z.default_steps(family)
    try:
        k = int(str(steps).strip())
    except ValueError:
        k = None
    if k not in choices:
        raise gr.Error(f"D-MMD steps must be one of {', '.join(map(str, choices))} for {family} "
                       f"(the shipped students' step counts), got {steps!r}.")
    return k


def generate(family: str, class_choice, seed, num_samples, cfg, steps=None, progress=gr.Progress()):
    """Six panels from the same noise: teacher (50 steps), teacher (4 steps), DMD, DMD2-SGTS, Phased DMD, DP-DMD.

    Discrete families (``steps`` = the D-MMD step count ``k``, default :meth:`Zoo.default_steps`): the
    teacher at 100, ``k`` and ``4k`` steps, the ``k``-step D-MMD student with and without its noise input,
    and data, all from the all-masked state with the same seed.

    A generator: the distilled students' panels come first, each as soon as it is sampled, then
    the few-step teachers, then the full teacher, whose caption counts the seconds while it runs
    (its outputs are cached per (family, class, seed, n, CFG), so a repeated click shows it at once).
    Every update holds 6 images, 6 captions (NFE, milliseconds, speedup over the full teacher,
    pairwise diversity, or for ``ring-mix-tokens`` the exact TV to the true joint) and a summary;
    the last one holds them all.
    """
    z = get_zoo()
    z.family(family)
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, _sample_limits(family)[0])
    cfg = _float(cfg, "teacher CFG", 0.0, MAX_CFG)
    k = _steps_choice(z, family, steps)
    teacher = z.models[family]["teacher"]
    full = z.full_steps(family)
    labels = _labels(class_choice, n, teacher.num_classes)
    noise = _initial(teacher, seed, n)
    panels = z.panels(family, k)
    images: list = [None] * 6
    captions = [f"**{title}**  \nwaiting…" for _, title in panels]
    results: dict[int, tuple] = {}  # panel -> (title, nfe, ms, measure, note)
    what = "all classes" if class_choice in (None, "", "all") else f"class {class_choice}"
    start = "the all-masked state and the same seed" if k is not None else "the same noise"
    summary = (f"{family}, {what}, seed {seed}, {n} sample(s), teacher CFG {cfg:g}"
               + (f", D-MMD steps k = {k}" if k is not None else "")
               + f"; every panel starts from {start}. Speedup = teacher ({full} steps) time / model time.")
    distilled = {float(m.meta["cfg"]) for key, m in z.models[family].items()
                 if key != "teacher" and isinstance(getattr(m, "meta", None), dict) and "cfg" in m.meta}
    if k is not None and distilled and cfg not in distilled:
        summary += f"  \nThe students were distilled at CFG {', '.join(f'{c:g}' for c in sorted(distilled))}."
    if isinstance(getattr(teacher, "model", None), TokenOracle):
        summary += ("  \nThe teacher is the exact oracle (a lookup in the joint's table, not a network): its times "
                    "are not a network's.")
    floor = tv_floor(family, labels)
    if floor is not None:
        summary += (f"  \nTV: exact total variation between the samples' joint histogram and the true joint, per "
                    f"class, weighted by class counts; sampling noise alone gives about {floor:.3f} at this n "
                    f"(mean of 20 draws).")

    def update(changed=()):
        """Only the changed panels travel; the caller's last update sends everything."""
        imgs = [images[i] if i in changed else gr.skip() for i in range(6)]
        return (*imgs, *captions, summary)

    yield (*[gr.update(value=None, label=title) for _, title in panels], *captions, summary)
    # Cached teacher panels first (instant), then the students (and data), then the teachers still to compute.
    ready = [i for i, (key, _) in enumerate(panels) if key.startswith("teacher")
             and _teacher_key(family, key, class_choice, seed, n, cfg) in TEACHER_CACHE]
    order = ready + [i for i, (key, _) in enumerate(panels) if not key.startswith("teacher")]
    order += [i for i, (key, _) in enumerate(panels) if key.startswith("teacher@") and i not in ready]
    order += [i for i, (key, _) in enumerate(panels) if key == "teacher" and i not in ready]
    for i in order:
        key, title = panels[i]
        model = z.sampler(family, key, cfg) if key and key != "data" else None
        entry = None
        if key == "data":
            t0 = time.perf_counter()
            try:
                x = data_samples(family, labels, seed)
            except Exception as e:  # e.g. a dataset that cannot be loaded here: an empty panel, not an error
                images[i] = _empty_panel()
                captions[i] = f"**{title}**: not available ({e})"
                yield update([i])
                continue
            results[i] = (title, None, 1000 * (time.perf_counter() - t0), _measure(family, x, labels), "")
        elif model is None:
            images[i] = _empty_panel()
            captions[i] = f"**{title}**: not available" + (f" (`{family}/{key}` is not built yet)" if key else "")
            yield update([i])
            continue
        elif key.startswith("teacher"):
            estimate = None
            if key == "teacher":  # same network and batch: time scales with the steps
                done = [(int(panels[j][0].split("@")[1]), r[2]) for j, r in results.items()
                        if panels[j][0].startswith("teacher@")]
                if done:
                    estimate = max(ms_ / s_ for s_, ms_ in done) * full / 1000
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
            if "measure" not in entry:
                entry["measure"] = _measure(family, x, labels)
            results[i] = (title, entry["nfe"], ms, entry["measure"], note)
        else:
            t0 = time.perf_counter()
            x = model.sample(labels, seed=seed, noise=noise)
            ms = 1000 * (time.perf_counter() - t0)
            results[i] = (title, model.nfe, ms, _measure(family, x, labels), "")
        if entry is not None:  # the rendered panel is kept with the cached samples
            images[i] = entry.get("panel") if entry.get("panel_title") == title else None
            if images[i] is None:
                images[i] = entry["panel"] = _panel(family, title, x, labels)
                entry["panel_title"] = title
        else:
            images[i] = _panel(family, title, x, labels)
        teacher_ms = next((r[2] for j, r in results.items() if panels[j][0] == "teacher"), None)
        for j, (t_, nfe, ms_, measure, note) in results.items():
            captions[j] = _caption(t_, nfe, ms_, teacher_ms if nfe is not None else None, measure, note, full)
        yield update([i])
    yield (*images, *captions, summary)


def _continuous_family(z: Zoo, family: str) -> None:
    """The tabs besides Compare take flow-matching families only."""
    z.family(family)
    if _discrete(family):
        raise gr.Error(f"{family!r} is a discrete (masked-diffusion) family: it is shown in the Compare tab only; "
                       f"here choose one of: {', '.join(z.continuous_families()) or 'none'}.")


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
    _continuous_family(z, family)
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
    lines = ["| model | spread vs teacher | coverage of teacher | Vendi |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['spread']:.2f} | {v['coverage']:.2f} | {v['Vendi']:.2f} |" for k, v in scores.items()]
    if skipped:
        lines.append(f"\nSkipped (not built yet): {', '.join(skipped)}")
    lines.append(f"\nTeacher samples {'from the cache' if cached else 'computed now (cached for next time)'}.")
    return fig, "\n".join(lines)


# Layout ----------------------------------------------------------------------------------------

def _count_label(family: str | None) -> str:
    most = _sample_limits(family)[0] if family else MAX_SAMPLES
    return f"number of samples (1..{most})"


def panel_titles(family: str, steps=None) -> list:
    """Compare's six image labels for ``family`` at D-MMD ``steps`` (updates; the images are cleared)."""
    z = get_zoo()
    return [gr.update(value=None, label=title) for _, title in z.panels(family, _steps_choice(z, family, steps))]


def compare_controls(family: str) -> list:
    """Compare's controls for a newly picked family: the D-MMD step choice (discrete families only), the
    number of samples (thousands for token pairs), the teacher's CFG (1 for masked teachers), the panel titles."""
    z = get_zoo()
    z.family(family)
    choices = [str(k) for k in z.step_choices(family)]
    k = z.default_steps(family)
    steps = gr.update(choices=choices, value=None if k is None else str(k), visible=bool(choices))
    count = gr.update(value=_sample_limits(family)[1], label=_count_label(family))
    cfg = gr.update(value=z.models[family]["teacher"].cfg)
    return [steps, count, cfg, *panel_titles(family, k)]


def build_app() -> gr.Blocks:
    """The Gradio Blocks of the app (models load here, once)."""
    z = get_zoo()
    families = z.families
    default_family = "mnist" if "mnist" in families else (families[0] if families else None)
    default_panels = z.panels(default_family) if default_family else PANELS
    default_cfg = z.models[default_family]["teacher"].cfg if default_family else 3.0
    max_classes = max((z.models[f]["teacher"].num_classes for f in families), default=10)
    class_choices = ["all"] + [str(c) for c in range(max_classes)]
    others = z.continuous_families()  # the tabs besides Compare
    default_other = "mnist" if "mnist" in others else (others[0] if others else None)
    shipped = {k for f in others for k in z.students(f)}
    students = [k for k in STUDENTS if k in shipped] + sorted(shipped - set(STUDENTS))
    discrete = [f for f in families if f not in others]
    notes = "  \n".join(f"- {n}" for n in z.notes)
    lab_choices = list(live.method_presets())  # the registry as it is now
    lab_a, lab_b = [m if m in lab_choices else lab_choices[min(i, len(lab_choices) - 1)]
                    for i, m in enumerate(LAB_DEFAULTS)]

    with gr.Blocks(title="pdmd_lab: Phased DMD explorer") as demo:
        gr.Markdown("# pdmd_lab: few-step distillation, side by side\n"
                    "Teacher (50 Euler steps) vs DMD vs DMD2-SGTS vs **Phased DMD** vs DP-DMD, same noise, same class"
                    + (f"; and in Compare, masked diffusion distilled by **D-MMD** ({', '.join(discrete)})."
                       if discrete else "."))
        if notes:
            gr.Markdown(f"<details><summary>Model notes</summary>\n\n{notes}\n</details>")
        with gr.Tab("Compare", elem_id="tab-compare"):
            with gr.Row():
                family = gr.Dropdown(families, value=default_family, label="family", elem_id="family-dd")
                klass = gr.Dropdown(class_choices, value="all", label="class", allow_custom_value=True,
                                    elem_id="class-dd")
                default_k = z.default_steps(default_family) if default_family else None
                steps = gr.Dropdown(  # custom values allowed: generate() checks them against the family's
                    [str(k) for k in z.step_choices(default_family)] if default_family else [],
                    value=None if default_k is None else str(default_k), label="D-MMD steps k",
                    allow_custom_value=True, visible=default_k is not None, elem_id="steps-dd")
                seed = gr.Number(0, label=f"seed (0..{SEED_MAX})", precision=0, elem_id="seed-num")
                count = gr.Number(_sample_limits(default_family)[1] if default_family else 16,
                                  label=_count_label(default_family), precision=0, elem_id="count-num")
                cfg = gr.Number(default_cfg, label="teacher CFG (0..10)", elem_id="cfg-num")
            btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            gr.Markdown("Panels appear as each model finishes: the distilled students first (well under a second), "
                        "the full teacher last. The teacher's samples are cached per family, class, seed, number "
                        "and CFG: clicking again shows them at once."
                        + (f"  \nDiscrete families ({', '.join(discrete)}): masked diffusion, the D-MMD student at "
                           "k steps with and without its noise input against the teacher at k, 4k and 100 steps "
                           "and data; the students were distilled at CFG 1. For ring-mix-tokens each panel shows "
                           "the joint histogram of the two tokens and the exact TV to the true joint."
                           if discrete else ""))
            images, captions = [], []
            for row in (range(0, 3), range(3, 6)):
                with gr.Row(equal_height=False):
                    for i in row:
                        with gr.Column(min_width=200):
                            images.append(gr.Image(label=default_panels[i][1], type="numpy", format="png",
                                                   interactive=False, elem_id=f"panel-{i}", elem_classes=["panel"]))
                            captions.append(gr.Markdown(elem_id=f"caption-{i}"))
            summary = gr.Markdown(elem_id="summary")
            btn.click(generate, [family, klass, seed, count, cfg, steps], [*images, *captions, summary],
                      api_name="generate", show_progress_on=[images[0]])
            family.input(compare_controls, [family], [steps, count, cfg, *images], api_name="compare_controls")
            steps.input(panel_titles, [family, steps], images, api_name="panel_titles")

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
                t_family = gr.Dropdown(others, value=default_other, label="family")
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
                d_family = gr.Dropdown(others, value=default_other, label="family")
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
                c_family = gr.Dropdown(others, value=default_other, label="family")
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

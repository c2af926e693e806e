"""What every tab of the app shares: the shipped models (loaded once), the sample cache, validation
of numbers, and how a family's samples become a panel and numbers.

Thin: every number and figure comes from the library. A dataset's **family** (its kind of data:
points, images, tokens, trajectories, or one a user registers) is resolved once per request with
:func:`pdmd_lab.families.get_family` and asked: its panel (``render_panel``), classes, the numbers
under each panel (``compare_metrics``, labels and directions from its ``metrics``), its teacher's step
count in comparisons. Nothing here asks which kind of data it is.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import itertools  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import OrderedDict  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from app import live, rows  # noqa: E402
from app.rows import DEFAULT_PAIR_SAMPLES, MAX_PAIR_SAMPLES, MAX_SAMPLES  # noqa: E402,F401
from pdmd_lab import zoo  # noqa: E402
from pdmd_lab.data import get_dataset  # noqa: E402
from pdmd_lab.families import Family, get_family  # noqa: E402
from pdmd_lab.families.continuous import ContinuousFamily  # noqa: E402
from pdmd_lab.sampling import get_sampler  # noqa: E402

FAMILIES = ("mnist", "ring-mix")  # preferred order; any other family with a teacher and a student follows
SEED_MAX = 2**31 - 1
MAX_CFG = 10.0
MAX_DIVERSITY_N = 512
MAX_CLASS_N = 128
TEACHER_STEPS = 50
TEACHER_CACHE_SIZE = 256  # entries: one per model and request (six per Compare click)
# The six Compare panels: (key, title). "teacher" and "teacher@4" are the family's teacher at 50 / 4 steps.
PANELS = (
    ("teacher", "Teacher, 50 steps"),
    ("teacher@4", "Teacher cut to 4 steps (no distillation)"),
    ("dmd-1s", "DMD, 1 step"),
    ("dmd2-sgts-4s", "DMD2-SGTS, 4 steps"),
    ("phased-dmd-4s4p", "Phased DMD, 4 steps / 4 phases"),
    ("dp-dmd-4s", "DP-DMD, 4 steps"),
)
# Hook for datasets whose panels are chosen by hand: dataset -> its six (key, title) panels. A dataset not
# listed here uses PANELS when it has any of their students, else a step choice k over its own students
# (e.g. the D-MMD students of the token datasets): the teacher at full, k and 4k steps, the k-step
# students with and without their noise input, and data.
FAMILY_PANELS: dict[str, tuple] = {}
# Step choices: the default k of a dataset (else the k with the most shipped students, the smallest on a
# tie), and how a method's name reads in a panel title.
DEFAULT_STEPS = {"ring-mix-tokens": 2}
METHOD_TITLES = {"d-mmd": "D-MMD"}
SAMPLER_API = ("sample", "with_steps", "num_classes", "shape", "nfe", "cfg")  # what Compare needs of a teacher
STUDENTS = ("phased-dmd-4s4p", "phased-dmd-4s2p", "dmd2-sgts-4s", "dp-dmd-4s", "dmd-1s")
DISTILL_METHODS = live.PRESETS  # label -> flat spec (method, steps, method options), as at import
LAB_DEFAULTS = ("dmd-1s", "phased-dmd-4s4p")


# Models ----------------------------------------------------------------------------------------

def family_of(dataset: str) -> Family:
    """The :class:`~pdmd_lab.families.Family` of a dataset (a shown error when no family claims it)."""
    try:
        return get_family(dataset)
    except ValueError as e:
        raise gr.Error(str(e)) from None


def has_teacher(family: str, available) -> bool:
    """Whether ``family`` (a dataset) has a teacher: a listed one, or an exact oracle its family gives
    (``ring-mix-tokens/teacher``, which ``zoo.list_models`` does not list)."""
    if f"{family}/teacher" in available:
        return True
    try:
        return get_family(family).has_oracle(family)
    except ValueError:  # a dataset no family claims
        return False


def shipped_families(available=None) -> list[str]:
    """Datasets with a teacher and at least one shipped student, ``FAMILIES`` first."""
    available = set(zoo.list_models() if available is None else available)
    fams = {n.split("/")[0] for n in available if n.count("/") == 1
            and n.split("/")[1] not in ("teacher", "classifier")}
    fams = {f for f in fams if has_teacher(f, available)}
    return [f for f in FAMILIES if f in fams] + sorted(fams - set(FAMILIES))


def _recipe_students(family: str) -> dict[str, dict]:
    """``name -> recipe`` of the students the kit's recipes define for dataset ``family`` (shipped or not)."""
    from pdmd_lab.recipes import RECIPES

    return {n.split("/", 1)[1]: r for n, r in RECIPES.items()
            if n.startswith(f"{family}/") and n.count("/") == 1 and r.get("kind") == "student"}


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
            fam = get_family(family)
            try:  # at the family's comparison step count (50; masked diffusion: 100), its default CFG
                loaded = {"teacher": zoo.load(f"{family}/teacher", steps=fam.comparison_teacher_steps)}
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
            for key in [k for k in _recipe_students(family) if k not in shipped]:
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
            clf = fam.classifier(family)  # images: the shipped classifier, whose features measure samples
            if clf is not None:
                self.classifiers[family] = clf

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
        """The datasets of the tabs besides Compare: flow-matching families (trajectories, phases,
        embeddings of their samples), :class:`~pdmd_lab.families.continuous.ContinuousFamily`."""
        return [f for f in self.models if isinstance(get_family(f), ContinuousFamily)]

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
        """Compare's step choice: the step counts ``k`` of the shipped students, for datasets laid out by
        step count (not by :data:`PANELS`: none of its students shipped; e.g. D-MMD's); else []."""
        if family in FAMILY_PANELS or self._by_method(family):
            return []
        return sorted({int(self.family(family)[k].num_steps) for k in self.students(family)})

    def _by_method(self, family: str) -> bool:
        """Whether ``family``'s Compare shows :data:`PANELS` (one of their students is shipped)."""
        return any(k in self.family(family) for k, _ in PANELS[2:])

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
        """The six Compare panels ``(key, title)`` of ``family`` (see ``FAMILY_PANELS``); datasets laid out
        by step count (:meth:`step_choices`) at ``steps`` (default :meth:`default_steps`): the teacher at
        full, ``k`` and ``4k`` steps, the ``k``-step students with and without their noise input, and data."""
        if family in FAMILY_PANELS:
            return tuple(FAMILY_PANELS[family])[:6]
        models = self.family(family)  # noqa: F841  (unknown datasets raise here)
        if self.step_choices(family):
            k = self.default_steps(family) if steps is None else int(steps)
            students = self._students_at(family, k)
            noisy = [s[:2] for s in students if s[2]] or [("", _student_title("d-mmd", k, 1))]
            plain = [s[:2] for s in students if not s[2]] or [("", _student_title("d-mmd", k, 0))]
            full = self.full_steps(family)
            return (("teacher", f"Teacher, {full} steps"),
                    (f"teacher@{k}", f"Teacher cut to {k} step{'s' if k != 1 else ''} (no distillation)"),
                    noisy[0], plain[0], (f"teacher@{4 * k}", f"Teacher, {4 * k} steps"), ("data", _data_title(family)))
        return (("teacher", f"Teacher, {self.full_steps(family)} steps"),) + PANELS[1:]


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

    def items(self) -> list:
        """A snapshot of the ``(key, value)`` pairs, least recently used first."""
        with self._lock:
            return list(self._data.items())

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
        return rows.labels_all(n, num_classes)
    c = _int(class_choice, "class", 0, num_classes - 1)
    return torch.full((n,), c, dtype=torch.long)


_noise = rows.noise


def _initial(model, seed: int, n: int) -> torch.Tensor:
    """The seeded initial state of ``model``'s sampler: Gaussian noise (flow matching, equal to
    :func:`_noise`) or all tokens masked (masked diffusion)."""
    spec = get_sampler(getattr(model, "sampler", "euler"))
    return spec.initial(model.shape, n, torch.Generator().manual_seed(seed), "cpu")


def _sample_limits(family: str) -> tuple[int, int]:
    """``(most, default)`` number of samples in Compare (:func:`app.rows.sample_limits`)."""
    family_of(family)  # an unknown dataset: a shown error
    return rows.sample_limits(family)


def figure_array(fig) -> np.ndarray:
    """A matplotlib Figure rendered to an RGB uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _empty_panel(size: int = 96) -> np.ndarray:
    return np.full((size, size, 3), 235, dtype=np.uint8)


_PANEL_DIR: list = []  # the app's own folder of panel files (made on first use, in the system's temp folder)
_PANEL_COUNT = itertools.count()


def _panel_path(suffix: str) -> str:
    with _ZOO_LOCK:
        if not _PANEL_DIR:
            _PANEL_DIR.append(tempfile.mkdtemp(prefix="pdmd-lab-panels-"))
    return os.path.join(_PANEL_DIR[0], f"{next(_PANEL_COUNT)}{suffix}")


def _panel(family: str, title: str, x, labels) -> str:
    """One Compare panel as a file the page shows: an animated GIF where the family's samples are videos
    (``render_clip``), else a PNG of its ``render_panel`` (no title: the caption names the model). Written
    once per cached sample set into the app's own temporary folder, so a repeated click sends the same file
    and encodes nothing."""
    fam = family_of(family)
    clip = fam.render_clip(x, labels, dataset=family)
    if clip is not None:
        path = _panel_path(".gif")
        with open(path, "wb") as f:
            f.write(clip)
        return path
    ax = fam.render_panel(x, labels, dataset=family)
    fig = ax.figure
    fig.set_size_inches(3.6, 3.6 * fig.get_figheight() / fig.get_figwidth())  # the family's aspect, 3.6 in wide
    FigureCanvasAgg(fig)
    path = _panel_path(".png")
    fig.savefig(path, format="png", dpi=100)
    return path


# The numbers under each Compare panel: ``(label, value, lower_is_better)``, value a float or a string
# ("7/8"), direction True (lower is better), False (higher is better) or None, from the family's metrics.

def _measures(family: str, x, labels) -> list:
    """``[(label, value, lower_is_better)]`` of :meth:`Family.compare_metrics` on one sample set."""
    fam = family_of(family)
    known = {m.key: m for m in fam.metrics}
    try:
        values = fam.compare_metrics(family, x, labels, classifier=get_zoo().classifiers.get(family))
    except ValueError as e:  # e.g. too few samples for a number: the panel stays, the number says why
        return [("numbers", f"n/a ({e})", None)]
    return [(known[k].label if k in known else k, v, known[k].lower_is_better if k in known else None)
            for k, v in values.items()]


def measures_legend(family: str, shown) -> str:
    """What the shown Compare numbers (their labels) measure: the family's metrics' one-line docs."""
    return "; ".join(f"*{m.label}*: {m.doc}" for m in family_of(family).metrics if m.label in shown and m.doc)


def _data_title(family: str) -> str:
    return ("Data: exact draws from the true distribution" if family_of(family).has_oracle(family)
            else "Data: training samples")


def data_samples(family: str, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Data of the labels' classes (exact draws where the dataset has them), seeded: the reference panel of
    datasets laid out by step count."""
    ds = get_dataset(family)
    g = torch.Generator().manual_seed(int(seed))
    out = None
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c)[:, 0]
        x = ds.sample(len(idx), seed=g, labels=int(c))[0]
        out = torch.empty((len(labels), *x.shape[1:]), dtype=x.dtype) if out is None else out
        out[idx] = x
    return out


def _continuous_family(z: Zoo, family: str) -> None:
    """The tabs besides Compare take flow-matching families only."""
    z.family(family)
    if family not in z.continuous_families():
        raise gr.Error(f"{family!r} is not a flow-matching family ({family_of(family).name}): it is shown in the "
                       f"Compare tab only; here choose one of: {', '.join(z.continuous_families()) or 'none'}.")


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # re-raised in the request's thread
        return e


"""A family: everything the faces (CLI, app, zoo, evaluate, study, figures) need to know about one kind of data.

A **family** is a kind of data: ``points`` (2D mixtures), ``images``, ``tokens`` (masked diffusion),
``latents`` (real diffusers backbones), and whatever a user registers. A **dataset** (``ring-mix``,
``mnist``, ``mnist-binary``) is an instance of a kind: ``Dataset.kind`` names its family (a family
also claims older spellings through :attr:`Family.dataset_kinds`, e.g. ``points`` claims ``"2d"``).
Zoo names keep their ``<dataset>/<model>`` form (``mnist/teacher``); the family is looked up from the
dataset, once, with :func:`get_family`, and then asked, never switched on::

    fam = get_family("mnist-binary")           # a family name, a dataset name, a Dataset, or a model
    x0 = fam.prior("mnist-binary", 16)         # all-mask tokens (16, 1, 28, 28)
    ax = fam.render_panel(x, labels, dataset="mnist-binary", title="D-MMD, 4 steps")

Adding a kind is one file: subclass :class:`Family`, decorate it with :func:`register_family`, and
register its datasets with :func:`pdmd_lab.data.register_dataset` (``kind=`` the family's name).
``docs/families.md`` walks through one.

Layering: this module imports only :mod:`pdmd_lab.data`. Family modules may import data, nets,
metrics, sampling, teacher, student and viz, but never zoo, evaluate, study or the CLI (those import
the families): whatever a family needs from above (loading a model by name) is passed in as a
callable (``load``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from pdmd_lab.data import DATASETS, Dataset, get_dataset


@dataclass(frozen=True)
class Metric:
    """One metric a family reports: its key in result rows, a column header, and its direction.

    ``lower_is_better``: True (distances, KL, TV), False (coverage, recall, accuracy, Vendi), None when
    the number has no better direction (NFE, timings, diversity ratios to the reference).
    """

    key: str
    label: str
    lower_is_better: bool | None = None
    doc: str = ""  # one line: what it measures and how it is computed


class Family:
    """One kind of data. Subclass it, set the class attributes, override what differs.

    Class attributes
    ----------------
    ``name``: the family's name (``"points"``), the key of :data:`FAMILIES`.
    ``dataset_kinds``: the values of ``Dataset.kind`` this family claims besides ``name`` (``("2d",)``).
    ``description``: one line for listings.
    ``samplers``: the sampler names (:data:`pdmd_lab.sampling.SAMPLERS`) its models may use; the first is
    the teachers' default (``("euler", "renoise")``; tokens: ``("masked",)``).
    ``teacher_kind``: the ``kind`` written in its teacher folders' ``config.json`` (``"teacher"``;
    tokens: ``"masked-teacher"``).
    ``model_kinds``: every folder kind a model of this family may have (teachers and ``"student"``).
    ``metrics``: the :class:`Metric` s it reports, in table order (:meth:`columns` picks those present).
    ``default_teacher_steps``: the teacher's step count when none is given (50).

    Everything that takes a ``dataset`` accepts a dataset name or a :class:`~pdmd_lab.data.Dataset`.
    """

    name: ClassVar[str] = ""
    dataset_kinds: ClassVar[tuple[str, ...]] = ()
    #: dataset names this family owns without a :data:`~pdmd_lab.data.DATASETS` entry, because the model
    #: defines shape and classes (backbone latents: ``("prompts",)``); such a family overrides
    #: :meth:`dataset` / :meth:`shape` / :meth:`num_classes` to read them from the model.
    unregistered_datasets: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    samplers: ClassVar[tuple[str, ...]] = ("euler",)
    teacher_kind: ClassVar[str] = "teacher"
    model_kinds: ClassVar[tuple[str, ...]] = ("teacher", "student")
    metrics: ClassVar[tuple[Metric, ...]] = ()
    default_teacher_steps: ClassVar[int] = 50

    # Data: shape, classes, prior ------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of the registered datasets of this family, in registry order."""
        return [n for n, d in DATASETS.items() if self.claims(d)]

    def claims(self, dataset: Dataset) -> bool:
        """Whether ``dataset`` is of this family (its ``kind`` is :attr:`name` or one of :attr:`dataset_kinds`)."""
        return dataset.kind == self.name or dataset.kind in self.dataset_kinds

    def dataset(self, dataset) -> Dataset:
        """The :class:`~pdmd_lab.data.Dataset` of a name (ValueError if unknown or of another family)."""
        ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset)
        if not self.claims(ds):
            raise ValueError(f"dataset {ds.name!r} is of kind {ds.kind!r}, not of family {self.name!r}")
        return ds

    def shape(self, dataset) -> tuple[int, ...]:
        """One sample's shape: ``(2,)`` points, ``(C, H, W)`` images, ``(L,)`` or ``(1, H, W)`` tokens."""
        return tuple(self.dataset(dataset).shape)

    def num_classes(self, dataset) -> int:
        """Number of classes; the null (unconditional) label is ``num_classes``."""
        return int(self.dataset(dataset).num_classes)

    def class_names(self, dataset) -> list[str]:
        """A display name per class (``"0"``, ``"1"``, ... unless the dataset gives ``class_names``)."""
        ds = self.dataset(dataset)
        names = getattr(ds, "class_names", None)
        return list(names) if names else [str(c) for c in range(ds.num_classes)]

    def is_unconditional(self, dataset) -> bool:
        """True when the dataset has one class only: labels are all 0, CFG does nothing."""
        return self.num_classes(dataset) <= 1

    def prior(self, dataset, n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``n`` initial states of its samplers ``(n, *shape)``: standard normal noise by default."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return torch.randn((n, *self.shape(dataset)), generator=g).to(device or "cpu")

    def nfe(self, steps: int, cfg: float = 1.0) -> int:
        """Network evaluations of a ``steps``-step run: one per step, two with CFG (``cfg != 1``)."""
        return int(steps) * (1 if cfg == 1.0 else 2)

    # Oracle and teachers --------------------------------------------------------------------------

    def oracle(self, dataset):
        """The exact teacher of ``dataset`` (a Denoiser: GMM velocity, token-table logits), or None."""
        return None

    def has_oracle(self, dataset) -> bool:
        """Whether :meth:`oracle` gives an exact teacher (``oracle:<dataset>`` then loads without training)."""
        return self.oracle(dataset) is not None

    def teacher_cfg(self, dataset) -> float:
        """The CFG scale of the dataset's real score (the teacher's default guidance): ``dataset.teacher_cfg``
        when set, else 1 (no guidance)."""
        cfg = getattr(self.dataset(dataset), "teacher_cfg", None)
        return 1.0 if cfg is None else float(cfg)

    def lists_teacher(self, dataset) -> bool:
        """Whether ``<dataset>/teacher`` is listed by the zoo without a folder (an oracle with a teacher CFG)."""
        ds = self.dataset(dataset)
        return getattr(ds, "teacher_cfg", None) is not None and self.has_oracle(ds)

    def default_net_config(self, dataset):
        """The network config the kit trains for ``dataset`` (teachers, and students fitted to an oracle)."""
        raise ValueError(f"family {self.name!r} has no default network")

    def teacher_config(self, data, **fields):
        """The teacher-training config (a dataclass) for dataset ``data``; ``fields`` given as None take the
        family's defaults (batch size, learning rate)."""
        raise ValueError(f"family {self.name!r} does not train teachers here")

    def train_teacher(self, config, out, *, resume: bool = True, progress: bool = True, command: str = ""):
        """Train a teacher from :meth:`teacher_config` into the folder ``out``; returns its path."""
        raise ValueError(f"family {self.name!r} does not train teachers here")

    def teacher_sampler(self, spec: str, *, steps: int | None = None, cfg: float | None = None, name: str = ""):
        """A teacher as a :class:`~pdmd_lab.student.Sampler` (``oracle:<dataset>`` or a folder of
        :attr:`teacher_kind`), run with ``steps`` (default :attr:`default_teacher_steps`) and ``cfg``
        (default :meth:`teacher_cfg`). ``with_steps(k)`` gives the same teacher at ``k`` steps."""
        raise ValueError(f"family {self.name!r} has no teachers")

    # Rendering ------------------------------------------------------------------------------------

    def render_panel(self, x, labels=None, *, dataset, ax=None, title: str | None = None):
        """Draw one sample set into a matplotlib ``ax`` (a new figure's axes when None) and return the axes.

        ``x``: samples ``(n, *shape)`` as one model gave them; ``labels``: their classes ``(n,)`` or None.
        Points: a scatter coloured by class over the modes; images: a grid; tokens: a joint heat map
        or a grid. The app's Compare tab calls this for every model, whatever the family.
        """
        raise NotImplementedError(f"family {self.name!r} cannot draw a panel")

    def render_grid(self, rows: dict, *, dataset, captions: dict | None = None, title: str | None = None):
        """One panel per entry of ``rows`` (``{name: x}`` or ``{name: (x, labels)}``) side by side or
        stacked; returns a matplotlib ``Figure``. ``captions``: text under each name (``"NFE 4"``)."""
        from matplotlib.figure import Figure

        n = len(rows)
        fig = Figure(figsize=(3.2 * n, 3.4), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (name, v) in zip(axes, rows.items()):
            x, labels = v if isinstance(v, tuple) else (v, None)
            cap = (captions or {}).get(name)
            self.render_panel(x, labels, dataset=dataset, ax=ax, title=name if cap is None else f"{name}\n{cap}")
        if title:
            fig.suptitle(title)
        return fig

    def samples_figure(self, x, labels=None, *, dataset, title: str | None = None):
        """A figure of one sample set (``pdmd-lab sample``): one panel, titled."""
        return self.render_grid({title or "": (x, labels)}, dataset=dataset)

    def render_clip(self, x, labels=None, *, dataset) -> bytes | None:
        """Samples that are videos drawn as an animated GIF (the bytes), or None: the family's samples are
        stills, drawn by :meth:`render_panel`. The app's Compare shows a clip where there is one."""
        return None

    def render_animation(self, trajectory: list, *, dataset, labels=None, expert_index=None, **kwargs):
        """An animation (``matplotlib.animation.Animation``) of a sampling trajectory ``[x_{t_0}, ..., x_{t_N}]``;
        ``expert_index[i]``: the expert of step i. ValueError for families without one."""
        raise ValueError(f"family {self.name!r} has no trajectory animation")

    def default_figure(self, dataset, *, shipped: list[str], load: Callable, seed: int = 0, label: int = 0,
                       n: int = 8, n_points: int = 2000):
        """The comparison figure of ``pdmd-lab figures --family <dataset>``: returns ``(Figure, file name)``.

        ``shipped``: the zoo names of the dataset's models; ``load(name)`` loads one as a Sampler
        (``name@k`` for a teacher at ``k`` steps). ``label``/``n``: the class and sample count of image
        rows; ``n_points``: samples per point panel.
        """
        raise ValueError(f"family {self.name!r} has no comparison figure")

    def default_figure_name(self, dataset, *, label: int = 0) -> str:
        """The file name :meth:`default_figure` returns, known before anything is sampled (so the CLI checks
        the output before the work)."""
        return f"{self.dataset(dataset).name}_methods.png"

    # Metrics and evaluation -----------------------------------------------------------------------

    def columns(self, rows: dict) -> list[Metric]:
        """The :attr:`metrics` present in any of ``rows`` (``{name: {key: value}}``), in table order."""
        return [m for m in self.metrics if any(m.key in r for r in rows.values())]

    def lower_is_better(self, key: str) -> bool | None:
        """The direction of metric ``key`` (None: no direction, or not one of this family's metrics)."""
        return next((m.lower_is_better for m in self.metrics if m.key == key), None)

    def evaluate(self, models: dict, *, n: int, seed: int = 0, batch_size: int | None = None,
                 reference: str | None = None, load: Callable, progress: bool = True) -> dict:
        """Score loaded models of one dataset side by side (``pdmd-lab evaluate``).

        ``models``: ``{row name: Sampler}``, all of one dataset; ``load(name)`` loads more rows (the
        family adds its teacher rows itself: the teacher at 50, 4, 1 steps; tokens: at ``k``, ``4k``, 100).
        ``batch_size`` None: the family's own (250 flow-matching; 500 tokens: the seeds are per batch, so
        the batch size is part of the numbers). ``reference``: a model name (flow-matching: the reference
        set, default the teacher at 50 steps; tokens: the teacher spec, default the students' teacher).
        Same labels (classes cycling) and same noise for every model. Returns ``{"family": <dataset>,
        "n", "seed", "rows": {name: {metric: value}}, "floor": {...}, ...}``; :meth:`markdown_table`
        renders it.
        """
        raise ValueError(f"family {self.name!r} cannot be evaluated")

    def markdown_table(self, result: dict) -> str:
        """The result of :meth:`evaluate` as a markdown table, one row per model."""
        rows = result["rows"]
        cols = self.columns(rows)
        lines = ["| model | " + " | ".join(m.label for m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(r.get(m.key)) for m in cols) + " |")
        return "\n".join(lines) + "\n"

    # ``pdmd-lab study`` rows: the metric keys a run reports (None: the study's 2D set) and how a run is scored.
    study_metrics: ClassVar[tuple[str, ...] | None] = None

    def study_scores(self, dataset, model, *, seed: int, n: int) -> dict | None:
        """The scores of one study run of ``model`` (``n`` samples, ``seed``), keys :attr:`study_metrics`
        (points: against the exact teacher at 50 steps); None: this family does not score study runs."""
        return None

    def diversity(self, dataset, x: torch.Tensor, labels: torch.Tensor, *, classifier=None) -> dict:
        """Diversity logs of a student's samples during training (``div_*`` keys), for
        :class:`~pdmd_lab.evaluate.DiversityMonitor`."""
        return {}

    # One sample set at a time (the app's Compare panels) -------------------------------------------

    #: The teacher's step count in side-by-side comparisons (the app's Compare): 50; tokens: 100.
    comparison_teacher_steps: ClassVar[int] = 50

    def compare_metrics(self, dataset, x: torch.Tensor, labels: torch.Tensor, *, classifier=None) -> dict:
        """The numbers that show collapse in one sample set, cheap enough for every Compare panel.

        ``x``: samples ``(n, *shape)`` of one model, ``labels`` their classes ``(n,)``. Returns
        ``{key: value}`` with keys among :attr:`metrics` (the app takes each number's label and direction
        from there) and values floats or short strings (``"7/8"``); absolute numbers, no reference set
        (the app shows the full teacher's value beside each). Points: modes covered and mode KL to the
        mixture's weights; tokens: exact TV to the joint (toy) or Hamming diversity (images); images:
        pairwise cosine similarity (of ``classifier`` features when given, e.g. :meth:`classifier` loaded
        once by the caller; else pixels); trajectories: mean flow and dynamic degree. Default: none.
        """
        return {}

    def compare_note(self, dataset, labels: torch.Tensor) -> str:
        """One sentence on reading :meth:`compare_metrics` at these labels (e.g. the TV that exact draws give
        at this sample size), or ``""``."""
        return ""

    def classifier(self, dataset):
        """The shipped classifier whose features measure this family's samples (images), or None."""
        return None

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.description}>"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3g}"
    return str(v)


# Registry ---------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {}


def register_family(cls):
    """Class decorator: register one instance of a :class:`Family` subclass under ``cls.name``.

    Registering a name again replaces the old family (a test or notebook may redefine one).
    Returns the class unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, Family)) or not cls.name:
        raise ValueError(f"register_family takes a Family subclass with a name, got {cls!r}")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(x) -> Family:
    """The family of ``x``: a :class:`Family`, a family name (``"tokens"``), a dataset name (``"mnist"``),
    a :class:`~pdmd_lab.data.Dataset`, or anything with a ``dataset`` attribute naming one (a loaded
    model). Unknown names raise ValueError listing the families and datasets."""
    if isinstance(x, Family):
        return x
    if isinstance(x, str) and x in FAMILIES:
        return FAMILIES[x]
    if not isinstance(x, (str, Dataset)):
        x = getattr(x, "dataset", None) or ""
        if not x:
            raise ValueError("the model does not say which dataset it samples")
    if isinstance(x, str):
        owner = next((f for f in FAMILIES.values() if x in f.unregistered_datasets), None)
        if owner is not None:  # e.g. the latents of a diffusers backbone: shape and classes are the model's
            return owner
        if x not in DATASETS:
            raise ValueError(f"unknown dataset {x!r}; choose one of: {', '.join(DATASETS)} "
                             f"(or a family: {', '.join(FAMILIES)})")
        x = DATASETS[x]
    for fam in FAMILIES.values():
        if fam.claims(x):
            return fam
    raise ValueError(f"dataset {x.name!r} is of kind {x.kind!r}, which no family claims "
                     f"(families: {', '.join(FAMILIES)})")

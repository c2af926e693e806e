"""``tokens``: masked (absorbing-state) diffusion over integer tokens, distilled with D-MMD.

* shape ``(L,)`` (the two-token toy ``ring-mix-tokens``) or ``(1, H, W)`` (``mnist-binary``); the prior is
  all-mask (every position holds the mask token ``V``); the sampler is the masked ancestral sampler
  (``"masked"``), ``k`` steps, one network call per step (two with CFG).
* exact oracle: the token table of ``ring-mix-tokens`` (:class:`~pdmd_lab.discrete.oracle.TokenOracle`);
  teachers are otherwise MDLM networks (folders of kind ``masked-teacher``).
* a panel is the joint histogram of the two tokens (toy) or a grid of binarised images.
* evaluation: every model samples the same labels with the same seeds; the teacher joins at each student's
  ``k``, at ``4k`` and at :data:`FULL_STEPS`. The toy reports the exact TV and KL to the true joint (floor:
  the TV of sampling noise alone at the same sample size); binarised MNIST reports class accuracy, the
  Frechet distance of classifier features to the training split, per-class Vendi and Hamming diversity
  and classifier entropy (floor: the held-out split). Both report the mean output entropy of the sampler.

What is discrete itself (masking, the reveal posterior, the D-MMD losses and method, token metrics) stays
in :mod:`pdmd_lab.discrete`; this module is what the faces need to know about the kind.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pdmd_lab import io, viz
from pdmd_lab.data import get_dataset
from pdmd_lab.discrete.masking import masked_initial, sample_masked, step_net
from pdmd_lab.discrete.metrics import image_metrics, joint_distances, joint_histogram, to_images, tv_noise_floor
from pdmd_lab.families.base import Family, Metric, register_family
from pdmd_lab.families.images import image_panel
from pdmd_lab.progress import heartbeat

FULL_STEPS = 100  # the teacher's "full" step count in comparisons


# Figures of token samples (they take data and return a Figure; nothing here trains) ----------------

def _joint_of(dataset: str):
    from pdmd_lab.discrete.teacher import ORACLES

    if dataset not in ORACLES:
        return None
    return ORACLES[dataset](get_dataset(dataset).vocab_size)


def _hist_panel(ax, h: np.ndarray, title: str, vmax: float) -> None:
    ax.imshow(h.T, origin="lower", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def joint_figure(samples: dict, dataset: str = "ring-mix-tokens", *, label: int | None = None,
                 title: str | None = None, max_cols: int = 4, true_joint: bool = True) -> Figure:
    """One panel per entry of ``samples`` (``name -> (tokens (N, 2), labels)``) with the histogram of the
    joint (class ``label`` only, or all), after a first panel with the true joint when it is known and
    ``true_joint`` (the app draws one model per figure and leaves it out)."""
    joint = _joint_of(dataset) if true_joint else None
    v = get_dataset(dataset).vocab_size
    panels = []
    if joint is not None:
        p = joint.table(label) if label is not None else joint.tables[:-1].mean(0)
        panels.append(("true joint", p.numpy()))
    for name, (tokens, labels) in samples.items():
        tokens = torch.as_tensor(tokens)
        if label is not None:
            tokens = tokens[torch.as_tensor(labels) == label]
        panels.append((name, joint_histogram(tokens, v).numpy()))
    vmax = max(float(np.quantile(h, 0.995)) for _, h in panels) or 1.0
    cols = min(max_cols, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.5 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, h) in zip(axes, panels):
        _hist_panel(ax, h, name, vmax)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    what = f"class {label}" if label is not None else "all classes"
    fig.suptitle(title or f"{dataset}: joint of the two tokens ({what})", fontsize=10)
    return fig


def samples_figure(tokens, labels=None, *, dataset: str = "", title: str | None = None) -> Figure:
    """The figure of ``pdmd-lab sample`` for token datasets: per-class joints (toy) or an image grid."""
    ds = get_dataset(dataset)
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2:  # two tokens per sample
        labels = torch.zeros(len(tokens), dtype=torch.long) if labels is None else torch.as_tensor(labels)
        classes = sorted(torch.unique(labels).tolist())
        fig = Figure(figsize=(2.4 * len(classes), 2.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(classes)))
        hists = [joint_histogram(tokens[labels == c], ds.vocab_size).numpy() for c in classes]
        vmax = max(float(np.quantile(h, 0.995)) for h in hists) or 1.0
        for ax, c, h in zip(axes, classes, hists):
            _hist_panel(ax, h, f"class {c}", vmax)
        fig.suptitle(title or dataset, fontsize=10)
        return fig
    return viz.samples_figure(to_images(tokens), labels, dataset=dataset, title=title)


def grid_figure(rows: dict, *, captions: dict | None = None, title: str | None = None) -> Figure:
    """Binarised images, models as rows: ``rows[name] = tokens (N, 1, H, W)`` (same labels and seeds per column)."""
    return viz.image_grid_figure({k: to_images(v) for k, v in rows.items()}, captions=captions, title=title)


def steps_comparison_figure(rows: dict, *, dataset: str = "ring-mix-tokens", label: int | None = None,
                            title: str | None = None) -> Figure:
    """The two-token toy, one row per step count ``k``: the true joint, then each model's joint histogram.

    ``rows[k] = {column title: (tokens (N, 2), labels)}`` (e.g. the teacher at ``k`` steps, D-MMD and D-MMD
    without the noise input); titles carry what the caller puts in them (TV, NFE). A missing model leaves
    its cell blank."""
    joint = _joint_of(dataset)
    v = get_dataset(dataset).vocab_size
    cols = 1 + max(len(r) for r in rows.values())
    true = (joint.table(label) if label is not None else joint.tables[:-1].mean(0)).numpy()
    hists = {}
    for k, models in rows.items():
        for name, (tokens, labels) in models.items():
            tokens, labels = torch.as_tensor(tokens), torch.as_tensor(labels)
            tv = joint_distances(tokens, labels, joint)["tv"]
            pick = tokens if label is None else tokens[labels == label]
            hists[k, name] = (joint_histogram(pick, v).numpy(), tv)
    vmax = max([float(np.quantile(true, 0.995))] + [float(np.quantile(h, 0.995)) for h, _ in hists.values()]) or 1.0
    fig = Figure(figsize=(2.3 * cols, 2.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), cols))
    for i, (k, models) in enumerate(rows.items()):
        _hist_panel(axes[i, 0], true, "true joint", vmax)
        axes[i, 0].set_ylabel(f"k = {k}", fontsize=10)
        for j in range(1, cols):
            names = list(models)
            if j - 1 >= len(names):
                axes[i, j].set_axis_off()
                continue
            h, tv = hists[k, names[j - 1]]
            _hist_panel(axes[i, j], h, f"{names[j - 1]}\nTV {tv:.3f}", vmax)
    what = f"class {label}" if label is not None else "all classes"
    fig.suptitle(title or f"{dataset}: joint of the two tokens ({what}); TV to the true joint over all classes",
                 fontsize=10)
    return fig


# Evaluation -----------------------------------------------------------------------------------------

@torch.no_grad()
def sample_with_entropy(model, labels: torch.Tensor, seed: int, batch_size: int = 500):
    """Samples of ``model`` for ``labels`` (seeded per batch) and the mean output entropy (nats)."""
    out, total, count = [], 0.0, 0
    vocab = step_net(model, 1.0).vocab_size
    device = next(step_net(model, 1.0).parameters(), torch.zeros(())).device

    def keep(d):
        nonlocal total, count
        revealed = (d["z"] == vocab) & (d["x_next"] != vocab)
        p = d["probs"]
        total += float((-(p * torch.log(p.clamp_min(1e-30))).sum(-1))[revealed].sum())
        count += int(revealed.sum())

    for b, i in enumerate(range(0, len(labels), batch_size)):
        lab = labels[i:i + batch_size].to(device)
        z = masked_initial(model.shape, len(lab), device=device)
        g = torch.Generator().manual_seed(int(seed) * 7919 + b)
        out.append(sample_masked(model, z, model.step_times, class_labels=lab, callback=keep, generator=g).cpu())
    return torch.cat(out), total / max(count, 1)


# The family -----------------------------------------------------------------------------------------

@register_family
class TokensFamily(Family):
    name = "tokens"
    description = "integer tokens under masked diffusion (two-token toy with an exact joint, binarised MNIST)"
    samplers = ("masked",)
    teacher_kind = "masked-teacher"
    model_kinds = ("masked-teacher", "student")
    default_teacher_steps = 50
    full_steps = FULL_STEPS
    metrics = (
        Metric("tv", "tv", True, "total variation of the joint histogram to the exact joint, per class then "
               "averaged (two-token toy)"),
        Metric("kl", "kl", True, "KL(histogram || exact joint), per class then averaged (two-token toy)"),
        Metric("accuracy", "accuracy", False, "share of samples the shipped classifier assigns their class"),
        Metric("frechet", "frechet", True, "Frechet distance of classifier features to the training split"),
        Metric("vendi_per_class", "vendi_per_class", False, "per-class Vendi score of classifier features, cosine"),
        Metric("hamming_per_class", "hamming_per_class", False, "per-class mean share of differing positions"),
        Metric("classifier_entropy", "classifier_entropy", None, "mean entropy of the predicted class (nats)"),
        Metric("output_entropy", "output_entropy", None, "mean entropy of the categoricals the sampler draws "
               "from: 0 when it commits, log V when it draws at random"),
        Metric("nfe", "nfe", None, "network evaluations per sample"),
    )

    # Data, oracle, teachers -----------------------------------------------------------------------

    def prior(self, dataset, n, *, generator=None, device=None):
        """All-mask tokens ``(n, *shape)`` (the mask token is ``vocab_size``)."""
        return masked_initial(self.shape(dataset), n, generator, device)

    def oracle(self, dataset):
        """The exact masked denoiser of a token dataset with a known joint (``ring-mix-tokens``), or None."""
        from pdmd_lab.discrete.oracle import TokenOracle
        from pdmd_lab.discrete.teacher import ORACLES

        ds = self.dataset(dataset)
        return TokenOracle(ORACLES[ds.name](ds.vocab_size), ds.name) if ds.name in ORACLES else None

    def has_oracle(self, dataset) -> bool:
        from pdmd_lab.discrete.teacher import ORACLES

        return self.dataset(dataset).name in ORACLES

    def teacher_cfg(self, dataset) -> float:
        """Masked-diffusion teachers are compared without guidance (CFG 1)."""
        return 1.0

    def default_net_config(self, dataset):
        from pdmd_lab.discrete.nets import default_net_config

        return default_net_config(self.dataset(dataset))

    def teacher_config(self, data, **fields):
        from pdmd_lab.discrete.teacher import MaskedTeacherConfig

        self.dataset(data)
        given = {k: v for k, v in fields.items() if v is not None}
        return MaskedTeacherConfig(data=data, **{"batch_size": 64, "lr": 1e-3, **given})

    def train_teacher(self, config, out, *, resume=True, progress=True, command=""):
        from pdmd_lab.discrete.teacher import train_masked_teacher

        return train_masked_teacher(config, out, resume=resume, progress=progress, command=command)

    def teacher_sampler(self, spec, *, steps=None, cfg=None, name=""):
        from pdmd_lab.discrete.method import load_masked_sampler

        return load_masked_sampler(spec, steps=steps or self.default_teacher_steps, cfg=cfg, name=name)

    comparison_teacher_steps = FULL_STEPS

    def compare_metrics(self, dataset, x, labels, *, classifier=None) -> dict:
        """Token pairs with an exact joint: TV and KL to it (per class, weighted by class counts); binarised
        images: the mean share of differing pixels within a class."""
        ds = self.dataset(dataset)
        joint = _joint_of(ds.name)
        if joint is not None:
            d = joint_distances(torch.as_tensor(x), labels, joint)
            return {"tv": d["tv"], "kl": d["kl"]}
        from pdmd_lab.discrete.metrics import hamming_diversity

        per = [hamming_diversity(x[labels == c]) for c in torch.unique(labels) if int((labels == c).sum()) > 1]
        return {"hamming_per_class": float(np.mean(per))} if per else {}

    def compare_note(self, dataset, labels) -> str:
        """The TV that exact draws give at these labels' class counts: sampling noise alone."""
        joint = _joint_of(self.dataset(dataset).name)
        if joint is None:
            return ""
        labels = torch.as_tensor(labels)
        counts = {int(c): int((labels == c).sum()) for c in torch.unique(labels)}
        floor = sum(tv_noise_floor(joint.table(c), m) * m for c, m in counts.items()) / len(labels)
        return (f"TV: exact total variation between the samples' joint histogram and the true joint, per class, "
                f"weighted by class counts; sampling noise alone gives about {floor:.3f} at this n "
                f"(mean of 20 draws).")

    # Rendering ------------------------------------------------------------------------------------

    def render_panel(self, x, labels=None, *, dataset, ax=None, title=None):
        """The joint histogram of the two tokens (toy), or a grid of the binarised images."""
        ds = self.dataset(dataset)
        tokens = torch.as_tensor(x)
        if ax is None:
            ax = viz._new_figure(4, 4).subplots()
        if tokens.ndim == 2:
            h = joint_histogram(tokens, ds.vocab_size).numpy()
            _hist_panel(ax, h, title or "", float(np.quantile(h, 0.995)) or 1.0)
            return ax
        return image_panel(to_images(tokens), ax=ax, title=title)

    def render_grid(self, rows, *, dataset, captions=None, title=None):
        """Toy: :func:`joint_figure` (true joint first); images: :func:`grid_figure` (models as rows)."""
        ds = self.dataset(dataset)
        first = next(iter(rows.values()))
        first = first[0] if isinstance(first, tuple) else first
        if torch.as_tensor(first).ndim == 2:
            pairs = {k: (v if isinstance(v, tuple) else (v, torch.zeros(len(v), dtype=torch.long)))
                     for k, v in rows.items()}
            return joint_figure(pairs, ds.name, title=title)
        return grid_figure({k: (v[0] if isinstance(v, tuple) else v) for k, v in rows.items()}, captions=captions,
                           title=title)

    def samples_figure(self, x, labels=None, *, dataset, title=None):
        return samples_figure(x, labels, dataset=self.dataset(dataset).name, title=title)

    def default_figure(self, dataset, *, shipped, load, seed=0, label=0, n=8, n_points=2000):
        """Per step count ``k``: the teacher at ``k`` steps, the shipped D-MMD student and its no-noise ablation
        (toy: joint histograms with TV; MNIST: grids of class ``label``, the teacher at 100 steps on top)."""
        ds = self.dataset(dataset)
        students = [m for m in shipped if m.startswith(ds.name + "/") and m.split("/")[1] != "teacher"]
        if not students:
            raise ValueError(f"no shipped students of {ds.name!r} (run `pdmd-lab build-zoo --only {ds.name}`)")
        loaded = {m: load(m) for m in students}  # each student loaded once
        by_k: dict[int, list[str]] = {}
        for m, model in loaded.items():
            by_k.setdefault(model.num_steps, []).append(m)
        teacher = f"{ds.name}/teacher"
        if len(ds.shape) == 1:  # the two-token toy
            labels = torch.arange(n_points) % ds.num_classes
            rows = {}
            for k in sorted(by_k):
                models = {f"teacher, {k} step{'s' if k > 1 else ''}": load(f"{teacher}@{k}")}
                models.update({m.split("/")[1]: loaded[m] for m in sorted(by_k[k], key=lambda m: "no-noise" in m)})
                rows[k] = {name: (model.sample(labels, seed=seed), labels) for name, model in models.items()}
            return steps_comparison_figure(rows, dataset=ds.name), self.default_figure_name(ds)
        labels = torch.full((n,), label)
        names = [f"{teacher}@{FULL_STEPS}"]
        for k in sorted(by_k, reverse=True):
            names += [f"{teacher}@{k}", *sorted(by_k[k])]
        rows, captions = {}, {}
        for name in names:
            model = loaded.get(name) or load(name)
            rows[name] = model.sample(labels, seed=seed)
            captions[name] = f"NFE {model.nfe}"
        fig = grid_figure(rows, captions=captions, title=f"{ds.name}, class {label}")
        return fig, self.default_figure_name(ds, label=label)

    def default_figure_name(self, dataset, *, label=0):
        ds = self.dataset(dataset)
        return f"{ds.name}_steps.png" if len(ds.shape) == 1 else f"{ds.name}_class{label}.png"

    # Evaluation -----------------------------------------------------------------------------------

    def evaluate(self, models, *, n, seed=0, batch_size=None, reference=None, load, progress=True):
        """The teacher (``reference``, else the one the first student was distilled from) joins at each
        student's ``k``, at ``4k`` and at :data:`FULL_STEPS`; see the module docstring for the numbers."""
        if n < 8:
            raise ValueError(f"n must be >= 8, got {n}")
        family = {m.dataset for m in models.values()}.pop()
        ds = self.dataset(family)
        students = [m for m in models.values() if "teacher" in m.meta and not hasattr(m, "with_steps")]
        spec = reference or (students[0].meta["teacher"] if students else None)
        if spec is not None:
            base = load(spec, steps=FULL_STEPS)
            for k in sorted({s.num_steps for s in students} | {4 * s.num_steps for s in students} | {FULL_STEPS}):
                models.setdefault(f"{spec}@{k}", base.with_steps(k))
        labels = torch.arange(n) % ds.num_classes
        classifier = None
        if len(ds.shape) > 1:
            from pdmd_lab.embed import load_classifier

            classifier = load_classifier(Path(io.ASSETS) / "mnist" / "classifier")
            reference_set = ds._sampler.train()[0]
        joint = _joint_of(family)
        rows = {}
        bar = tqdm(models.items(), desc="evaluate", disable=not progress)
        with heartbeat(bar, enabled=progress):  # sampling a masked teacher at 100 steps takes a while
            for name, model in bar:
                t0 = time.perf_counter()
                x, entropy = sample_with_entropy(model, labels, seed, batch_size or 500)
                row = {"describe": model.describe(), "nfe": int(model.nfe), "steps": int(model.num_steps),
                       "seconds": round(time.perf_counter() - t0, 2), "output_entropy": entropy}
                if classifier is None:
                    d = joint_distances(x, labels, joint)
                    row.update({"tv": d["tv"], "kl": d["kl"]})
                else:
                    row.update(image_metrics(x, labels, classifier, reference_set))
                rows[name] = row
        if classifier is None:
            floor = {"tv": sum(tv_noise_floor(joint.table(c), int((labels == c).sum())) for c in range(ds.num_classes))
                     / ds.num_classes}
        else:
            held, held_y = ds._sampler.heldout()
            floor = dict(image_metrics(held, held_y, classifier, reference_set))
            floor["n"] = len(held)
        return {"family": family, "n": n, "seed": seed, "floor": floor, "rows": rows}

    def markdown_table(self, result: dict) -> str:
        """One row per model, then the floor (sampling noise for the toy, held-out data for images)."""
        rows = result["rows"]
        keys = [m.key for m in self.columns(rows)]
        lines = [f"{result['family']}, n = {result['n']}, seed {result['seed']}", "",
                 "| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]

        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
        lines.append("| floor (" + ("sampling noise" if "tv" in result["floor"] else "held-out data") + ") | "
                     + " | ".join(fmt(result["floor"].get(k, "")) for k in keys) + " |")
        return "\n".join(lines)

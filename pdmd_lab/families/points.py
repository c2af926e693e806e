"""``points``: low-dimensional vectors, above all 2D Gaussian mixtures with an exact oracle (``ring-mix``,
``grid-mix``) and 2D toys (moons, swiss roll, checkerboard).

* shape ``(D,)``, Gaussian prior; Euler and re-noising samplers; teachers are the exact GMM velocity
  (``oracle:<dataset>``) or a trained MLP.
* a panel is a scatter coloured by class, with the mixture's modes as crosses and 3-std circles.
* metrics (raw coordinates): modes covered / high quality / mode KL (mixtures only), energy distance,
  PRDC, per-class pairwise distance and RBF Vendi (fixed bandwidth 0.5, so sets compare).
"""

from __future__ import annotations

import numpy as np
import torch

from pdmd_lab import metrics
from pdmd_lab.families.base import Metric, register_family
from pdmd_lab.families.continuous import ContinuousFamily, cycling_labels, mean_per_class

RBF_BANDWIDTH = 0.5  # fixed Vendi bandwidth for 2D points, so that sets are comparable


@register_family
class PointsFamily(ContinuousFamily):
    name = "points"
    dataset_kinds = ("2d",)
    description = "points in R^D (2D Gaussian mixtures with an exact oracle, 2D toys)"
    teacher_defaults = {"batch_size": 256, "lr": 1e-3}
    metrics = (
        Metric("nfe", "NFE", None, "network evaluations per sample"),
        Metric("ms_per_batch", "ms / batch", True, "median wall time of one batch"),
        Metric("speedup", "speedup", False, "reference time / this model's time"),
        Metric("modes", "modes covered", False, "modes (per class) holding >= 2% of the class's samples, "
               "within 3 std, out of those the class has; mixtures only"),
        Metric("high_quality", "high quality", False, "share of samples within 3 std of a mode"),
        Metric("mode_kl", "mode KL", True, "KL(reference mode histogram || this one), per class"),
        Metric("energy_distance", "energy dist.", True, "energy distance to the reference set"),
        Metric("precision", "precision", False, "PRDC precision (k = 5) against the reference set"),
        Metric("recall", "recall", False, "PRDC recall (k = 5)"),
        Metric("density", "density", False, "PRDC density (k = 5)"),
        Metric("coverage", "coverage", False, "PRDC coverage (k = 5)"),
        Metric("pairwise_distance", "pairwise dist.", False, "mean pairwise distance within a class"),
        Metric("pairwise_distance_ratio", "pairwise dist. / ref", None, "over the reference's"),
        Metric("vendi", "Vendi (RBF)", False, "per-class Vendi score, RBF kernel of bandwidth 0.5"),
        Metric("vendi_ratio", "Vendi / ref", None, "over the reference's"),
        Metric("teacher_modes_missed", "teacher modes missed", True, "(class, mode) cells holding >= 2% of a "
               "class's teacher samples but < 2% of the model's (study)"),
        Metric("off_mode", "off-mode share", True, "share of samples farther than 3 stds from every mode (study)"),
        Metric("spread", "spread", False, "within-mode std over the teacher's, mean over modes both cover; "
               "1 = the teacher's, < 1 collapsed onto mode centres (study; closer to 1 is better)"),
    )
    study_metrics = ("energy_distance", "recall", "mode_kl", "teacher_modes_missed", "off_mode", "spread")

    # Metrics --------------------------------------------------------------------------------------

    def diversity_of(self, dataset, feats, labels) -> dict:
        return {"pairwise_distance": mean_per_class(metrics.pairwise_distance, feats, labels),
                "vendi": mean_per_class(metrics.vendi_score, feats, labels, kernel="rbf", bandwidth=RBF_BANDWIDTH)}

    def reference_state(self, dataset, ref_x, labels):
        ds = self.dataset(dataset)
        return metrics.mode_histogram(ds.gmm, ref_x, labels) if ds.gmm is not None else None

    def fidelity(self, dataset, x, feats, labels, ref_x, ref_feats, *, classifier=None, reference_state=None) -> dict:
        ds = self.dataset(dataset)
        row: dict = {}
        if ds.gmm is not None:
            cov = metrics.mode_coverage(ds.gmm, x, labels, reference_weights=reference_state)
            row.update(modes_covered=cov["modes_covered"], modes_expected=cov["modes_expected"],
                       mode_coverage=cov["coverage"], high_quality=cov["high_quality"], mode_kl=cov["kl"],
                       modes_per_class={int(c): v["modes_covered"] for c, v in cov["per_class"].items()})
        row["energy_distance"] = metrics.energy_distance(x, ref_x)
        return row

    def diversity(self, dataset, x, labels, *, classifier=None) -> dict:
        """``div_pairwise_distance``, ``div_vendi`` (RBF, bandwidth 0.5) and, for mixtures,
        ``div_saturation``: the share of samples outside 3 stds of every mode."""
        ds = self.dataset(dataset)
        logs = {"div_pairwise_distance": mean_per_class(metrics.pairwise_distance, x, labels),
                "div_vendi": mean_per_class(metrics.vendi_score, x, labels, kernel="rbf", bandwidth=RBF_BANDWIDTH)}
        if ds.gmm is not None:
            logs["div_saturation"] = float((ds.gmm.assign_modes(x) < 0).double().mean())
        return logs

    def compare_metrics(self, dataset, x, labels, *, classifier=None) -> dict:
        """Mixtures: modes covered (of those the classes have) and the mode KL to the mixture's own weights
        (:func:`pdmd_lab.metrics.mode_coverage`); other point sets: the per-class pairwise distance."""
        ds = self.dataset(dataset)
        if ds.gmm is None:
            several = [c for c in torch.unique(labels).tolist() if int((labels == c).sum()) > 1]
            keep = torch.isin(labels, torch.tensor(several, dtype=torch.long))
            if not several:  # one sample per class: no pair to compare
                return {}
            return {"pairwise_distance": mean_per_class(metrics.pairwise_distance, x[keep], labels[keep])}
        cov = metrics.mode_coverage(ds.gmm, x, labels)
        return {"modes": f"{cov['modes_covered']}/{cov['modes_expected']}", "mode_kl": cov["kl"]}

    def study_scores(self, dataset, model, *, seed, n):
        """One ``pdmd-lab study`` run: ``n`` samples of ``model`` (classes cycling, noise from ``seed``) scored
        by :func:`score_2d` against the exact teacher's (50 Euler steps, the dataset's CFG, seed 10,000)."""
        ds = self.dataset(dataset)
        ref, labels = reference_samples(self, ds.name, n)
        return score_2d(ds.gmm, model.sample(labels, seed=seed), labels, ref)

    # Rendering ------------------------------------------------------------------------------------

    def render_panel(self, x, labels=None, *, dataset, ax=None, title=None):
        """A scatter coloured by class over the mixture's modes (crosses, 3-std circles), square limits."""
        from pdmd_lab import viz

        ds = self.dataset(dataset)
        if ax is None:
            ax = viz._new_figure(4, 4).subplots()
        arr = viz._np(x)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"points panels draw 2D points (N, 2), got {tuple(arr.shape)}")
        viz._scatter_classes(ax, arr, viz._labels_np(labels, len(arr)), s=8, alpha=0.7)
        if ds.gmm is not None:
            viz._draw_modes(ax, ds.gmm)
        xlim, ylim = viz._square_limits([arr], ds.gmm)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if title:
            ax.set_title(title, fontsize=10)
        return ax

    def render_grid(self, rows: dict, *, dataset, captions=None, title=None):
        """:func:`pdmd_lab.viz.scatter_figure`: one scatter per model, shared square limits, modes drawn."""
        from pdmd_lab import viz

        named = {(f"{k}\n{captions[k]}" if captions and captions.get(k) else k): v for k, v in rows.items()}
        return viz.scatter_figure(named, self.dataset(dataset).gmm, title=title)

    def samples_figure(self, x, labels=None, *, dataset, title=None):
        from pdmd_lab import viz

        return viz.samples_figure(x, labels, dataset=self.dataset(dataset).name, title=title)

    def render_animation(self, trajectory, *, dataset, labels=None, expert_index=None, **kwargs):
        """:func:`pdmd_lab.viz.trajectory_animation`: the points move from noise to samples, phase by phase."""
        from pdmd_lab import viz

        ds = self.dataset(dataset)
        experts = expert_index if expert_index is not None else [0] * (len(trajectory) - 1)
        return viz.trajectory_animation(trajectory, experts, gmm=ds.gmm, labels=labels, dataset=ds.name, **kwargs)

    def default_figure(self, dataset, *, shipped, load, seed=0, label=0, n=8, n_points=2000):
        """The teacher at 50, 4 and 1 steps and every shipped student, same noise: one scatter each."""
        from pdmd_lab import viz

        ds = self.dataset(dataset)
        names = comparison_names(ds.name, shipped)
        labels = cycling_labels(2000, ds.num_classes)
        samples = {name: (load(name).sample(labels, seed=seed), labels) for name in names}
        fig = viz.scatter_figure(samples, ds.gmm, title=f"{ds.name}: same noise for every method")
        return fig, self.default_figure_name(ds)

    def default_figure_name(self, dataset, *, label=0):
        return f"{self.dataset(dataset).name}_methods_scatter.png"


def comparison_names(dataset: str, shipped: list[str]) -> list[str]:
    """The rows of every comparison: the teacher at 50, 4 and 1 Euler steps, then each shipped student."""
    students = [n for n in shipped if n.startswith(dataset + "/") and n.split("/")[1] not in ("teacher", "classifier")]
    return [f"{dataset}/teacher@50", f"{dataset}/teacher@4", f"{dataset}/teacher@1", *students]


def reference_samples(family, dataset: str, n: int, seed: int = 10_000):
    """The samples a study scores against: the dataset's exact teacher at 50 Euler steps with its CFG."""
    if not family.has_oracle(dataset):
        raise ValueError(f"dataset {dataset!r} has no exact teacher to score study runs against")
    teacher = family.teacher_sampler(f"oracle:{dataset}", steps=50, name=f"{dataset}/teacher")
    labels = torch.arange(n) % teacher.num_classes
    return teacher.sample(labels, seed=seed), labels


def score_2d(gmm, x: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor, min_share: float = 0.02,
             num_std: float = 3.0) -> dict:
    """The study's point metrics of samples ``x`` against teacher samples ``ref`` (same labels): energy distance,
    recall (PRDC, k = 5), mode KL against the teacher's mode histogram, ``teacher_modes_missed``, ``off_mode``
    and ``spread`` (see :attr:`PointsFamily.metrics`)."""
    ref_hist = metrics.mode_histogram(gmm, ref, labels, num_std)
    hist = metrics.mode_histogram(gmm, x, labels, num_std)
    cov = metrics.mode_coverage(gmm, x, labels, min_share, num_std, reference_weights=ref_hist)
    teacher_cells = ref_hist >= min_share
    missed = int((teacher_cells & (hist < min_share)).sum())
    modes, ref_modes = gmm.assign_modes(x, num_std=num_std), gmm.assign_modes(ref, num_std=num_std)
    spreads = []
    for k in range(gmm.num_modes):
        pts, ref_pts = x[modes == k].double(), ref[ref_modes == k].double()
        if len(pts) >= 10 and len(ref_pts) >= 10:
            spreads.append(float(pts.std(0).mean() / ref_pts.std(0).mean()))
    return {"energy_distance": metrics.energy_distance(x, ref),
            "recall": metrics.prdc(ref, x, k=5)["recall"],
            "mode_kl": cov["kl"], "teacher_modes_missed": missed, "teacher_modes": int(teacher_cells.sum()),
            "off_mode": float((modes < 0).double().mean()), "spread": float(np.mean(spreads)) if spreads else 0.0}

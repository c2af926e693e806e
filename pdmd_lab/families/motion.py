"""The ``trajectories`` family: short clips of a moving point (``motion-mix``), exact oracle, motion metrics.

A sample is ``T`` frames of a 2D point stored flat, ``(2T,)`` (``x_0, y_0, x_1, ...``), so the kit's
MLPs, samplers and trainer run it as they run 2D points; the family views it as ``(T, 2)`` to draw
and measure it. The data, the exact mixture and the metrics live in :mod:`pdmd_lab.motion`.
"""

from __future__ import annotations

import torch

from pdmd_lab import motion
from pdmd_lab.families.base import Family, Metric, register_family

EVAL_TEACHER_STEPS = (50, 4, 1)


@register_family
class TrajectoriesFamily(Family):
    name = "trajectories"
    description = "short trajectories of a 2D point (T frames, stored flat as (2T,)), motion types as modes"
    samplers = ("euler", "renoise")
    metrics = (
        Metric("mean_flow", "mean flow", None, "mean over samples and frames of |p_{f+1} - p_f| (exact)"),
        Metric("flow_ratio", "flow / teacher's", None, "mean flow over the reference's (1 = the teacher's motion)"),
        Metric("dynamic_degree", "dynamic degree", None,
               f"share of samples whose mean flow exceeds {motion.DYNAMIC_THRESHOLD:g} (half the slow speed)"),
        Metric("dynamic_degree_diff", "dyn. degree - teacher's", None, "dynamic degree minus the reference's"),
        Metric("speed_ratio", "speed / teacher's", None, "mean fitted speed |v| (least-squares line per clip) "
               "over the reference's: the coherent motion"),
        Metric("jitter_ratio", "jitter / teacher's", None, "mean RMS residual around that line over the "
               "reference's: frame-to-frame noise, which mean flow counts as motion"),
        Metric("mode_kl", "motion-mode KL", True, "KL(reference || model) over the most likely motion modes, "
               "per class, counts + 1"),
        Metric("motion_modes_missed", "modes missed", True, "(class, mode) cells with >= 2% of the reference's "
               "class but < 2% of the model's"),
        Metric("still_share", "still share", None, "share of samples whose most likely mode is still"),
        Metric("energy_distance", "energy distance", True, "energy distance to the reference's trajectories"),
        Metric("nfe", "NFE", None), Metric("ms_per_batch", "ms / batch", None),
    )

    def class_names(self, dataset) -> list[str]:
        ds = self.dataset(dataset)
        return list(motion.DIRECTIONS[:ds.num_classes])

    def oracle(self, dataset):
        from pdmd_lab.teacher import OracleTeacher

        ds = self.dataset(dataset)
        return OracleTeacher(ds.gmm, ds.name) if ds.gmm is not None else None

    def default_net_config(self, dataset):
        from pdmd_lab.nets import MLPConfig

        ds = self.dataset(dataset)
        return MLPConfig(data_dim=ds.shape[0], num_classes=ds.num_classes)

    def teacher_sampler(self, spec: str, *, steps: int | None = None, cfg: float | None = None, name: str = ""):
        from pdmd_lab.student import TeacherSampler

        dataset = spec.split(":", 1)[1] if spec.startswith("oracle:") else spec
        teacher = self.oracle(dataset)
        if teacher is None:
            raise ValueError(f"{spec!r}: only oracle:<dataset> teachers exist for family {self.name!r}")
        return TeacherSampler(teacher, steps=steps or self.default_teacher_steps,
                              cfg=self.teacher_cfg(dataset) if cfg is None else cfg, dataset=teacher.dataset,
                              shape=self.shape(dataset), meta={"name": name or f"{dataset}/teacher"})

    # Drawing --------------------------------------------------------------------------------------

    def render_panel(self, x, labels=None, *, dataset, ax=None, title: str | None = None, max_paths: int = 200):
        """Trajectories as paths (one colour per class), each ending in a dot at its last frame."""
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(3.2, 3.2)).subplots()
        tr = motion.as_frames(torch.as_tensor(x)).double().numpy()[:max_paths]
        lab = [0] * len(tr) if labels is None else torch.as_tensor(labels).reshape(-1).tolist()[:max_paths]
        for p, c in zip(tr, lab):
            ax.plot(p[:, 0], p[:, 1], color=f"C{int(c) % 10}", lw=0.6, alpha=0.5)
            ax.plot(p[-1, 0], p[-1, 1], "o", color=f"C{int(c) % 10}", ms=1.5, alpha=0.7)
        ax.set_aspect("equal")
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.tick_params(labelsize=6)
        if title:
            ax.set_title(title, fontsize=8)
        return ax

    def render_clip(self, x, labels=None, *, dataset):
        """The trajectories as a grid of small videos, a GIF (:func:`pdmd_lab.motion.clip_grid_gif`): one clip
        per sample, its dot in its class's colour with a fading trail."""
        self.dataset(dataset)
        return motion.clip_grid_gif(x, labels)

    def render_clips(self, rows: dict, *, n: int = 4, title: str | None = None):
        """Still figure of clips (frames superimposed, older ones dimmer), one row per model."""
        return motion.clips_figure(rows, n=n, title=title)

    def render_frames(self, traj, size: int = 64):
        """One trajectory as ``uint8 (T, H, W)`` frames of a dot (:func:`pdmd_lab.motion.render_frames`)."""
        return motion.render_frames(traj, size)

    def default_figure(self, dataset, *, shipped: list[str], load, seed: int = 0, label: int = 0, n: int = 6,
                       n_points: int = 400):
        """Clips of class ``label`` (frames superimposed, older dimmer): the teacher at 50 and 4 steps and every
        shipped student, each row captioned with its mean flow and dynamic degree over ``n_points`` clips."""
        name = self.dataset(dataset).name
        rows = {f"{name}/teacher@50": load(f"{name}/teacher@50"), f"{name}/teacher@4": load(f"{name}/teacher@4")}
        rows.update({m: load(m) for m in shipped if not m.endswith("/teacher")})
        labels = torch.full((n_points,), int(label))
        clips = {}
        for row, model in rows.items():
            x = model.sample(labels, seed=seed)
            short = row.split("/", 1)[1]
            clips[f"{short}\nflow {motion.mean_flow(x):.2f}, dyn {motion.dynamic_degree(x):.2f}"] = x
        fig = motion.clips_figure(clips, n=n, title=f"{name}, class {self.class_names(name)[label]}: "
                                                     f"{n} clips per model (older frames dimmer)")
        return fig, f"{name}_clips.png"

    def teacher_analysis(self, dataset="motion-mix", *, cfgs=(1.0, 1.5, 3.0), steps=(50, 4, 2), n: int = 2000) -> dict:
        """What guidance and the step count do to the exact teacher's motion, and where the type is committed:
        per (CFG, steps) the motion metrics against the 50-step teacher at the same CFG, and the posterior mass
        on still after the first stretch of sampling (at t ~ 0.75); the commitment times of each motion type
        (:func:`pdmd_lab.motion.commitment_times`, 50% and 90% of the posterior mass)."""
        name = self.dataset(dataset).name
        mix = self.dataset(name).gmm
        labels = torch.arange(n) % self.num_classes(name)
        out = {"n": n, "commitment_t_50pct": motion.commitment_times(mix, 0.5),
               "commitment_t_90pct": motion.commitment_times(mix, 0.9), "rows": {}}
        for cfg in cfgs:
            ref = self.teacher_sampler(f"oracle:{name}", steps=50, cfg=cfg).sample(labels, seed=10_000)
            for k in steps:
                t = self.teacher_sampler(f"oracle:{name}", steps=k, cfg=cfg)
                s = motion.score(mix, t.sample(labels, seed=0), labels, ref)
                along = motion.type_mass_along_sampling(mix, t, labels)
                i = min(range(len(along["t"])), key=lambda j: abs(along["t"][j] - 0.75))
                out["rows"][f"cfg {cfg:g}, {k} steps"] = {
                    **{m: s[m] for m in ("mean_flow", "flow_ratio", "speed_ratio", "jitter_ratio", "dynamic_degree",
                                         "still_share", "fast_share", "mode_kl")},
                    "still_mass_at_t": [along["t"][i], along["still"][i]]}
        return out

    def mass_along_sampling(self, models: dict, dataset="motion-mix", *, n: int = 2000, seed: int = 0) -> dict:
        """Per model (``{name: Sampler}``), the exact posterior mass on each motion type after every step of its
        own sampling (:func:`pdmd_lab.motion.type_mass_along_sampling`) and its jitter and speed ratios: at which
        step a student's motion departs from the teacher's."""
        name = self.dataset(dataset).name
        mix = self.dataset(name).gmm
        labels = torch.arange(n) % self.num_classes(name)
        ref = self.teacher_sampler(f"oracle:{name}", steps=50).sample(labels, seed=10_000)
        out = {}
        for row, model in models.items():
            r = motion.type_mass_along_sampling(mix, model, labels, seed=seed)
            speed, jitter = motion.fitted_motion(model.sample(labels, seed=seed))
            ref_speed, ref_jitter = motion.fitted_motion(ref)
            out[row] = {**r, "speed_ratio": float(speed.mean() / ref_speed.mean()),
                        "jitter_ratio": float(jitter.mean() / ref_jitter.mean())}
        return out

    # Metrics -----------------------------------------------------------------------------------------

    def compare_metrics(self, dataset, x, labels, *, classifier=None) -> dict:
        """Mean optical flow (exact displacement per frame) and dynamic degree (share of samples whose flow
        exceeds :data:`pdmd_lab.motion.DYNAMIC_THRESHOLD`); the teacher's values are the reference."""
        return {"mean_flow": motion.mean_flow(x), "dynamic_degree": motion.dynamic_degree(x)}

    study_metrics = ("mean_flow", "flow_ratio", "dynamic_degree", "dynamic_degree_diff", "speed_ratio",
                     "jitter_ratio", "mode_kl", "motion_modes_missed", "still_share", "energy_distance")

    def study_scores(self, dataset, model, *, seed: int, n: int) -> dict:
        """One ``pdmd-lab study`` run: ``n`` samples of ``model`` (classes cycling, noise from ``seed``) scored
        against the 50-step teacher's ``n`` samples (seed 10,000)."""
        name = self.dataset(dataset).name
        ref, labels = _reference(name, n)
        return self.score(name, model.sample(labels, seed=seed), labels, ref)

    def score(self, dataset, x, labels, ref) -> dict:
        """Motion metrics of trajectories ``x`` against the reference's ``ref`` (same labels)."""
        return motion.score(self.dataset(dataset).gmm, x, labels, ref)

    def evaluate(self, models: dict, *, n: int, seed: int = 0, batch_size: int = 250, reference: str | None = None,
                 load=None, progress: bool = True, dataset: str = "motion-mix") -> dict:
        """Teacher rows at 50, 4, 1 steps plus ``models``; same labels and noise for all; each row scored
        against the reference (the 50-step teacher with other noise unless ``reference`` names a row).
        ``dataset``: used when ``models`` is empty; otherwise the models' dataset."""
        import time

        names = list(models)
        dataset = next(iter(models.values())).dataset if models else self.dataset(dataset).name
        teacher = self.teacher_sampler(f"oracle:{dataset}")
        rows = {f"{dataset}/teacher@{k}": teacher.with_steps(k) for k in EVAL_TEACHER_STEPS}
        rows.update(models)
        labels = torch.arange(n) % self.num_classes(dataset)
        ref_name = reference or f"{dataset}/teacher@50"
        ref_model = rows[ref_name] if ref_name in rows else load(ref_name)
        ref = ref_model.sample(labels, seed=seed + 1_000_003)
        out = {}
        for name, model in rows.items():
            z = torch.randn((n, *self.shape(dataset)), generator=torch.Generator().manual_seed(seed))
            t0 = time.perf_counter()
            x = model.sample(labels, seed=seed, noise=z)
            ms = (time.perf_counter() - t0) * 1000 * batch_size / n
            out[name] = {**self.score(dataset, x, labels, ref), "nfe": int(model.nfe), "ms_per_batch": ms}
        return {"family": dataset, "n": n, "seed": seed, "reference": ref_name, "rows": out, "models": names}


_REFERENCES: dict = {}


def _reference(dataset: str, n: int, seed: int = 10_000):
    """The 50-step teacher's samples a study scores against (cached per process)."""
    if (dataset, n) not in _REFERENCES:
        fam = TrajectoriesFamily()
        teacher = fam.teacher_sampler(f"oracle:{dataset}", steps=50)
        labels = torch.arange(n) % fam.num_classes(dataset)
        _REFERENCES[(dataset, n)] = (teacher.sample(labels, seed=seed), labels)
    return _REFERENCES[(dataset, n)]

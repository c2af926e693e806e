"""``motion-mix``: short trajectories of a point as an exact Gaussian mixture, to measure motion.

A sample is ``T`` frames of a 2D point, stored flat as ``(2T,)`` = ``x_0, y_0, x_1, y_1, ...`` (the
engine's MLPs take flat vectors; :func:`as_frames` views it as ``(T, 2)``). A mode is a motion type:

    p_f = start + f (v_k + dv) + jitter_f,   start ~ N(0, START_STD^2 I),  dv ~ N(0, s_k^2 I),
    jitter_f ~ N(0, JITTER_STD^2 I),

with ``v_k`` the mode's velocity per frame: 0 (still), ``SLOW`` or ``FAST`` in one of four
directions (right, up, left, down): 9 modes. Each mode is a Gaussian with a full (low-rank plus
jitter) covariance, so the velocity ``E[eps - x0 | x_t, class]`` is exact (:class:`TrajectoryMixture`),
like ring-mix's. Classes are the four directions: class c draws still 0.3, slow-c 0.35, fast-c 0.25
and slow-(c+1) 0.1, so the still mode is shared by every class and each slow mode by two: CFG then
changes both (guidance suppresses shared modes).

Why this design: the motion type is a large, coherent displacement over all frames (a fast mode moves
``7 FAST = 8.4`` over the clip, far more than the start spread ``START_STD``), so under noise it is
the first thing the data commit to; the start position and the jitter are decided later, at low noise
(:func:`mode_posterior` computes the exact posterior over modes along ``t``; see
:func:`commitment_times`). That mirrors video, where motion is laid down in the first, high-noise
steps.

Metrics, named as in the Phased DMD paper (Wan2.1 T2V), computed exactly from coordinates:

* **mean flow**: the mean over samples and frames of ``|p_{f+1} - p_f|`` (the paper's image-based
  optical flow is an estimate of the same quantity; :func:`render_frames` draws the clips it reads);
* **dynamic degree**: the share of samples whose own mean flow exceeds :data:`DYNAMIC_THRESHOLD`
  (half the slow speed);
* **motion-mode coverage and KL**: each sample goes to its most likely motion mode (exact mode
  likelihoods, equal weights); per class, the histogram over modes is compared with the teacher's
  (``KL(teacher || model)`` with :data:`SMOOTHING` added to the counts; a teacher cell holding at least
  2% of its class is missed when the model gives it under 2%).
"""

from __future__ import annotations

import math

import numpy as np
import torch

FRAMES = 8
START_STD = 1.0
SLOW, FAST = 0.5, 1.2  # speed per frame
VELOCITY_STD = {"still": 0.04, "slow": 0.1, "fast": 0.2}  # spread of a mode's velocity per frame
JITTER_STD = 0.06
DIRECTIONS = ("right", "up", "left", "down")
DYNAMIC_THRESHOLD = SLOW / 2  # dynamic degree: share of samples whose mean flow exceeds this
SMOOTHING = 1.0  # pseudo-count per (class, mode) cell before the mode KL
MIN_SHARE = 0.02  # a (class, mode) cell counts for coverage at >= 2% of its class
CLASS_WEIGHTS = {"still": 0.3, "slow": 0.35, "fast": 0.25, "slow_next": 0.1}


def as_frames(x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """Flat ``(N, 2T)`` trajectories -> ``(N, T, 2)`` (a ``(N, T, 2)`` input is returned as is)."""
    x = torch.as_tensor(x)
    if x.ndim == 3:
        return x
    if x.ndim != 2 or x.shape[1] % 2:
        raise ValueError(f"trajectories must have shape (N, 2T) or (N, T, 2), got {tuple(x.shape)}")
    return x.reshape(len(x), x.shape[1] // 2, 2)


# The exact mixture ---------------------------------------------------------------------------

class TrajectoryMixture:
    """Class-conditional Gaussian mixture with one full covariance per mode, exact velocity.

    ``means (K, D)``, ``covs (K, D, D)``, ``weights (C, K)`` (rows sum to 1); the interface of
    :class:`pdmd_lab.data.GaussianMixture` (``sample``, ``velocity``, ``log_prob``, ``mode_weights``,
    ``to``), so :class:`~pdmd_lab.teacher.OracleTeacher` runs it unchanged.
    """

    def __init__(self, means, covs, weights, class_prior=None, mode_names=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum(1, keepdim=True)
        prior = torch.ones(len(w), dtype=torch.float64) if class_prior is None else class_prior
        self.class_prior = torch.as_tensor(prior, dtype=torch.float64) / float(torch.as_tensor(prior).sum())
        self.mode_names = list(mode_names or [str(k) for k in range(len(self.means))])
        lam, u = torch.linalg.eigh(self.covs)  # Sigma_k = U diag(lam) U^T
        self.eigvals, self.eigvecs = lam.clamp_min(0), u
        self._chol = torch.linalg.cholesky(self.covs)

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mode_weights(self, labels) -> torch.Tensor:
        """Mode weights ``(B, K)`` per label; label ``num_classes`` (or None) is the unconditional mixture."""
        uncond = (self.class_prior[:, None] * self.weights).sum(0)
        table = torch.cat([self.weights, uncond[None]], 0)
        if labels is None:
            return uncond[None]
        return table[torch.as_tensor(labels, dtype=torch.long).to(table.device)]

    def sample(self, n: int, seed=None, labels=None, return_modes: bool = False):
        """``n`` trajectories ``(n, D)`` float32 and their labels (drawn from the class prior unless given)."""
        g = (seed if isinstance(seed, torch.Generator)
             else torch.Generator().manual_seed(0 if seed is None else int(seed)))
        if labels is None:
            labels = torch.multinomial(self.class_prior, n, replacement=True, generator=g)
        labels = torch.as_tensor(labels, dtype=torch.long).expand(n).clone()
        modes = torch.multinomial(self.mode_weights(labels), 1, generator=g)[:, 0]
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        x = self.means[modes] + (self._chol[modes] @ z[..., None])[..., 0]
        return (x.float(), labels, modes) if return_modes else (x.float(), labels)

    def _component_stats(self, x_t: torch.Tensor, t: torch.Tensor):
        """Per-mode Gaussian log-density of ``x_t`` and its eigen-coordinates. ``y``: (B, K, D)."""
        x = x_t.double()[:, None, :]  # (B, 1, D)
        t = t.double().reshape(-1, 1, 1)  # (B, 1, 1)
        diff = x - (1 - t) * self.means[None]  # (B, K, D)
        y = torch.einsum("bkd,kde->bke", diff, self.eigvecs)  # coordinates in each mode's eigenbasis
        var = (1 - t) ** 2 * self.eigvals[None] + t**2  # (B, K, D): eigenvalues of Cov(x_t | k)
        logp = -0.5 * (y**2 / var).sum(-1) - 0.5 * torch.log(2 * math.pi * var).sum(-1)  # (B, K)
        return logp, y, var, t

    def log_prob(self, x, labels=None, t: float = 0.0) -> torch.Tensor:
        """Exact log-density of the (class-conditional) marginal ``p_t`` at ``x``."""
        logp, *_ = self._component_stats(x, torch.full((len(x),), float(t), dtype=torch.float64))
        w = self.mode_weights(labels).expand(len(x), -1)
        return torch.logsumexp(logp + torch.log(w.clamp_min(1e-300)), 1).float()

    def posterior(self, x_t, t, labels=None) -> torch.Tensor:
        """Posterior over modes ``p(k | x_t, class)`` ``(B, K)``."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(len(x_t))
        logp, *_ = self._component_stats(x_t, t)
        w = self.mode_weights(labels).expand(len(x_t), -1)
        return torch.softmax(logp + torch.log(w.clamp_min(1e-300)), 1)

    def velocity(self, x_t: torch.Tensor, t, labels=None) -> torch.Tensor:
        """Exact ``E[eps - x0 | x_t, class]``. Per mode, with ``S = (1 - t)^2 Sigma_k + t^2 I`` and
        ``d = x_t - (1 - t) mu_k``: ``E[x0 | x_t, k] = mu_k + (1 - t) Sigma_k S^-1 d`` and
        ``E[eps | x_t, k] = t S^-1 d``; modes mixed by their posterior (the isotropic case is
        :meth:`pdmd_lab.data.GaussianMixture.velocity`)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(len(x_t))
        logp, y, var, tt = self._component_stats(x_t, t)
        w = self.mode_weights(labels).expand(len(x_t), -1)
        resp = torch.softmax(logp + torch.log(w.clamp_min(1e-300)), 1)  # (B, K)
        # v_k = eps_k - x0_k = -mu_k + U [(t - (1 - t) lam) / var] y, in each mode's eigenbasis.
        coef = (tt - (1 - tt) * self.eigvals[None]) / var  # (B, K, D)
        v_k = torch.einsum("kde,bke->bkd", self.eigvecs, coef * y) - self.means[None]
        return (resp[..., None] * v_k).sum(1).to(x_t.dtype)

    def to(self, device) -> "TrajectoryMixture":
        return TrajectoryMixture(self.means.to(device), self.covs.to(device), self.weights.to(device),
                                 self.class_prior.to(device), self.mode_names)

    def mode_loglik(self, x: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of clean trajectories under each mode ``(B, K)``."""
        logp, *_ = self._component_stats(torch.as_tensor(x).reshape(len(x), -1), torch.zeros(len(x)))
        return logp

    def assign_modes(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely motion mode of each trajectory (equal weights)."""
        return self.mode_loglik(x).argmax(1)


def motion_mix(frames: int = FRAMES) -> TrajectoryMixture:
    """The ``motion-mix`` mixture: 9 motion modes (still, slow and fast in 4 directions), 4 classes."""
    f = torch.arange(frames, dtype=torch.float64)
    a = torch.zeros(2 * frames, 4, dtype=torch.float64)  # trajectory = A (start, dv) + mean
    a[0::2, 0], a[1::2, 1] = 1.0, 1.0
    a[0::2, 2], a[1::2, 3] = f, f
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    vel, spread, names = [torch.zeros(2, dtype=torch.float64)], [VELOCITY_STD["still"]], ["still"]
    for speed, kind in ((SLOW, "slow"), (FAST, "fast")):
        for d, name in zip(dirs, DIRECTIONS):
            vel.append(speed * d)
            spread.append(VELOCITY_STD[kind])
            names.append(f"{kind}-{name}")
    means = torch.stack([(f[:, None] * v[None]).reshape(-1) for v in vel])  # (K, 2T)
    covs = torch.stack([a @ torch.diag(torch.tensor([START_STD**2] * 2 + [s**2] * 2, dtype=torch.float64)) @ a.T
                        + JITTER_STD**2 * torch.eye(2 * frames, dtype=torch.float64) for s in spread])
    nd = len(DIRECTIONS)
    weights = torch.zeros(nd, len(vel), dtype=torch.float64)
    for c in range(nd):
        weights[c, 0] = CLASS_WEIGHTS["still"]
        weights[c, 1 + c] = CLASS_WEIGHTS["slow"]
        weights[c, 1 + nd + c] = CLASS_WEIGHTS["fast"]
        weights[c, 1 + (c + 1) % nd] = CLASS_WEIGHTS["slow_next"]
    return TrajectoryMixture(means, covs, weights, mode_names=names)


# Metrics --------------------------------------------------------------------------------------

def per_sample_flow(x) -> torch.Tensor:
    """Mean per-frame displacement ``mean_f |p_{f+1} - p_f|`` of each trajectory ``(N,)``."""
    p = as_frames(x).double()
    return (p[:, 1:] - p[:, :-1]).norm(dim=-1).mean(1)


def mean_flow(x) -> float:
    """Mean flow: the mean over samples and frames of ``|p_{f+1} - p_f|``."""
    return float(per_sample_flow(x).mean())


def dynamic_degree(x, threshold: float = DYNAMIC_THRESHOLD) -> float:
    """Share of trajectories whose mean flow exceeds ``threshold``."""
    return float((per_sample_flow(x) > threshold).double().mean())


def fitted_motion(x) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares line ``p_f ~ a + f v`` per trajectory: the coherent speed ``|v|`` ``(N,)`` and the jitter,
    the RMS residual per coordinate ``(N,)``. Mean flow counts both: still samples with jitter ``s`` have a
    flow of about ``1.25 sqrt(2) s``, so noisier outputs read as motion."""
    p = as_frames(x).double()  # (N, T, 2)
    f = torch.arange(p.shape[1], dtype=torch.float64)
    fc = f - f.mean()
    v = (fc[None, :, None] * (p - p.mean(1, keepdim=True))).sum(1) / (fc**2).sum()  # (N, 2)
    fit = p.mean(1, keepdim=True) + fc[None, :, None] * v[:, None, :]
    return v.norm(dim=-1), (p - fit).pow(2).mean((1, 2)).sqrt()


def mode_histogram(mixture: TrajectoryMixture, x, labels) -> np.ndarray:
    """Counts ``(C, K)`` of the most likely motion mode per class."""
    modes = mixture.assign_modes(torch.as_tensor(x).reshape(len(x), -1))
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    h = np.zeros((mixture.num_classes, mixture.num_modes))
    np.add.at(h, (labels.numpy(), modes.numpy()), 1)
    return h


def mode_scores(mixture: TrajectoryMixture, x, labels, ref_x) -> dict:
    """Motion-mode KL (teacher || model, per class, averaged), teacher cells missed, and mode shares."""
    h, ref = mode_histogram(mixture, x, labels), mode_histogram(mixture, ref_x, labels)
    kls = []
    for c in range(mixture.num_classes):
        if ref[c].sum() == 0:
            continue
        p = (ref[c] + SMOOTHING) / (ref[c] + SMOOTHING).sum()
        q = (h[c] + SMOOTHING) / (h[c] + SMOOTHING).sum()
        kls.append(float((p * np.log(p / q)).sum()))
    share = h / np.maximum(h.sum(1, keepdims=True), 1)
    ref_share = ref / np.maximum(ref.sum(1, keepdims=True), 1)
    cells = ref_share >= MIN_SHARE
    names = mixture.mode_names
    still = [k for k, n in enumerate(names) if n == "still"]
    fast = [k for k, n in enumerate(names) if n.startswith("fast")]
    return {"mode_kl": float(np.mean(kls)), "motion_modes_missed": int((cells & (share < MIN_SHARE)).sum()),
            "motion_modes": int(cells.sum()), "still_share": float(h[:, still].sum() / max(1, h.sum())),
            "fast_share": float(h[:, fast].sum() / max(1, h.sum()))}


def score(mixture: TrajectoryMixture, x, labels, ref_x) -> dict:
    """Every motion-mix metric of trajectories ``x`` against the teacher's ``ref_x`` (same labels)."""
    from pdmd_lab import metrics

    flow_, ref_flow = mean_flow(x), mean_flow(ref_x)
    dyn, ref_dyn = dynamic_degree(x), dynamic_degree(ref_x)
    speed, jitter = fitted_motion(x)
    ref_speed, ref_jitter = fitted_motion(ref_x)
    return {"mean_flow": flow_, "flow_ratio": flow_ / ref_flow if ref_flow > 0 else float("nan"),
            "dynamic_degree": dyn, "dynamic_degree_diff": dyn - ref_dyn,
            "speed_ratio": float(speed.mean() / ref_speed.mean()),
            "jitter_ratio": float(jitter.mean() / ref_jitter.mean()),
            **mode_scores(mixture, x, labels, ref_x),
            "energy_distance": metrics.energy_distance(torch.as_tensor(x).reshape(len(x), -1).float(),
                                                       torch.as_tensor(ref_x).reshape(len(ref_x), -1).float())}


# Where the motion type is decided ---------------------------------------------------------------

@torch.no_grad()
def mode_posterior_along_t(mixture: TrajectoryMixture, ts, n: int = 2000, seed: int = 0, cfg_labels=True):
    """Mean posterior probability of each sample's own mode along ``t``, for clean data noised to ``t``
    (``x_t = (1 - t) x0 + t eps``), class-conditional. Returns ``(len(ts),)`` numpy array."""
    x0, labels, modes = mixture.sample(n, seed, return_modes=True)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    out = []
    for t in ts:
        x_t = (1 - t) * x0.double() + t * eps.double()
        post = mixture.posterior(x_t, float(t), labels if cfg_labels else None)
        out.append(float(post.gather(1, modes[:, None]).mean()))
    return np.asarray(out)


@torch.no_grad()
def motion_type_posterior(mixture: TrajectoryMixture, ts, n: int = 2000, seed: int = 0) -> dict:
    """Mean posterior mass on each motion type (still / slow / fast, directions summed) of each sample's
    own type, along ``t``: ``{"still": (len(ts),), ...}``: how early each type is committed."""
    x0, labels, modes = mixture.sample(n, seed, return_modes=True)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    kinds = [n_.split("-")[0] for n_ in mixture.mode_names]
    groups = {k: torch.tensor([i for i, n_ in enumerate(kinds) if n_ == k]) for k in dict.fromkeys(kinds)}
    own = torch.tensor([list(groups).index(kinds[int(m)]) for m in modes])
    res = {k: [] for k in groups}
    for t in ts:
        x_t = (1 - t) * x0.double() + t * eps.double()
        post = mixture.posterior(x_t, float(t), labels)
        mass = torch.stack([post[:, idx].sum(1) for idx in groups.values()], 1)  # (B, types)
        for j, k in enumerate(groups):
            sel = own == j
            res[k].append(float(mass[sel, j].mean()) if sel.any() else float("nan"))
    return {k: np.asarray(v) for k, v in res.items()}


def commitment_times(mixture: TrajectoryMixture, level: float = 0.9, n: int = 2000, seed: int = 0) -> dict:
    """Per motion type, the largest ``t`` at which the mean posterior mass on the sample's own type reaches
    ``level`` (on a grid of 99 times): the noise level where the type is decided."""
    ts = np.linspace(0.99, 0.01, 99)
    post = motion_type_posterior(mixture, ts, n, seed)
    return {k: float(ts[np.argmax(v >= level)]) if (v >= level).any() else 0.0 for k, v in post.items()}


@torch.no_grad()
def type_mass_along_sampling(mixture: TrajectoryMixture, model, labels, seed: int = 0) -> dict:
    """Where a sampler commits to a motion type: along its own trajectory ``x_{t_0}, ..., x_{t_N}``, the exact
    class-conditional posterior mass on each type (still / slow / fast), averaged over samples.

    Returns ``{"t": [t_i], "still": [...], "slow": [...], "fast": [...]}``. For a state distributed as the
    data noised to ``t_i`` (the teacher's ODE, and a Phased DMD student's phase ends by design) this is
    the share of that type the model is heading for; comparing a student with the teacher at the same
    ``t`` shows at which step the motion error is made."""
    _, traj = model.sample(labels, seed=seed, return_trajectory=True)
    ts = [float(t) for t in model.step_times]
    kinds = [n.split("-")[0] for n in mixture.mode_names]
    groups = {k: [i for i, n in enumerate(kinds) if n == k] for k in dict.fromkeys(kinds)}
    out = {"t": ts, **{k: [] for k in groups}}
    for t, x in zip(ts, traj):
        post = mixture.posterior(x.double().reshape(len(x), -1), min(t, 1 - 1e-6), labels)
        for k, idx in groups.items():
            out[k].append(float(post[:, idx].sum(1).mean()))
    return out


# Rendering ------------------------------------------------------------------------------------

def render_frames(traj, size: int = 64, extent: float = 10.0, radius: float = 2.5) -> np.ndarray:
    """One trajectory ``(T, 2)`` (or flat ``(2T,)``) as ``uint8 (T, H, W)`` frames of a white dot on black.

    The frame shows ``[-extent, extent]^2`` (y up); the dot is a disc of ``radius`` pixels with a soft
    (one-pixel) edge, so sub-pixel motion moves its centroid. ``size / (2 extent)`` pixels per unit.
    """
    p = torch.as_tensor(traj, dtype=torch.float64).reshape(-1, 2).numpy()
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    scale = size / (2 * extent)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    frames = np.empty((len(p), size, size), np.uint8)
    for f, (x, y) in enumerate(p):
        cx, cy = (x + extent) * scale, (extent - y) * scale
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        frames[f] = (255 * np.clip(radius + 0.5 - d, 0, 1)).round().astype(np.uint8)
    return frames


def clips_figure(rows: dict, *, n: int = 4, size: int = 48, extent: float = 10.0, title: str | None = None):
    """Still figure of clips: one row per model (``{name: trajectories}``), ``n`` trajectories each, all
    frames superimposed with fading (older frames dimmer), so motion reads on paper."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.3 * n + 1.2, 1.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (name, x) in enumerate(rows.items()):
        tr = as_frames(x)
        for j in range(n):
            ax = axes[i][j]
            fr = render_frames(tr[j], size, extent).astype(np.float64)
            fade = np.linspace(0.25, 1.0, len(fr))[:, None, None]
            ax.imshow((fr * fade).max(0), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_gif(traj_rows, path, *, size: int = 64, extent: float = 10.0, duration_ms: int = 120) -> None:
    """Write clips as an animated GIF (Pillow): ``traj_rows`` is a list of trajectories (one row of clips) or a
    list of such lists (one row per model), drawn side by side with grey separators."""
    from PIL import Image

    rows = traj_rows if isinstance(traj_rows[0], (list, tuple)) else [list(traj_rows)]
    lines = []
    for row in rows:
        clips = [render_frames(t, size, extent) for t in row]
        sep = np.full((clips[0].shape[0], size, 1), 80, np.uint8)
        lines.append(np.concatenate([c for clip in clips for c in (clip, sep)], axis=2))  # (T, H, n (W + 1))
        lines.append(np.full((clips[0].shape[0], 1, lines[-1].shape[2]), 80, np.uint8))
    frames = np.concatenate(lines[:-1], axis=1) if len(lines) > 2 else lines[0]
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=duration_ms, loop=0)


def clip_grid_frames(x, labels=None, *, size: int | None = None, extent: float = 10.0, trail: float = 0.55,
                     max_clips: int = 64) -> np.ndarray:
    """Trajectories as a grid of clips, ``uint8 (T, H, W, 3)``: one small video per trajectory, laid out
    row by row (as many columns as rows, or one more), each a dot of its class's colour (matplotlib's
    ``tab10``) on black that leaves a fading trail (earlier frames kept at ``trail`` times their last
    brightness per frame), so both the motion and its path read in any one frame. At most ``max_clips``
    clips; ``size``: pixels per clip (96 for up to 16 clips, else 48)."""
    from matplotlib import colormaps

    tr = as_frames(torch.as_tensor(x)).double()[:max_clips]
    n = len(tr)
    if n < 1:
        raise ValueError("no trajectory to draw")
    lab = [0] * n if labels is None else [int(c) for c in torch.as_tensor(labels).reshape(-1).tolist()[:n]]
    size = size or (96 if n <= 16 else 48)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    steps = tr.shape[1]
    palette = np.asarray(colormaps["tab10"].colors)
    grid = np.full((steps, rows * (size + 1) - 1, cols * (size + 1) - 1, 3), 60.0)
    for i, (path, c) in enumerate(zip(tr, lab)):
        dots = render_frames(path, size, extent, radius=max(2.5, size / 32)).astype(np.float64) / 255.0
        shown = np.zeros_like(dots)
        for f in range(steps):  # the trail: every earlier frame, dimmer by `trail` per frame since
            shown[f] = np.maximum(dots[f], trail * shown[f - 1]) if f else dots[f]
        r, q = divmod(i, cols)
        y0, x0 = r * (size + 1), q * (size + 1)
        grid[:, y0:y0 + size, x0:x0 + size] = shown[..., None] * 255.0 * palette[c % 10][None, None, None]
    return grid.round().clip(0, 255).astype(np.uint8)


def clip_grid_gif(x, labels=None, *, duration_ms: int = 160, pause_ms: int = 600, **kwargs) -> bytes:
    """:func:`clip_grid_frames` as an animated GIF (Pillow; loops, holds the last frame ``pause_ms``)."""
    import io

    from PIL import Image

    frames = clip_grid_frames(x, labels, **kwargs)
    imgs = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    durations = [duration_ms] * (len(imgs) - 1) + [pause_ms]
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0)
    return buf.getvalue()

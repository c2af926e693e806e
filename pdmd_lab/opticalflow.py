"""Motion of generated video: mean optical-flow magnitude and dynamic degree, with OpenCV's Farneback.

The Phased DMD paper's video table (Wan2.1 T2V) reports the mean optical flow of a clip and its
dynamic degree (VBench: the share of clips that move). Here the flow between consecutive frames is
OpenCV's dense Farneback estimate (Farneback 2003, "Two-Frame Motion Estimation Based on Polynomial
Expansion"; no learned weights, so nothing to download), on 8-bit grey frames:

* :func:`frame_flows`: per pair of frames the mean flow magnitude (pixels per frame) over the
  interior (a ``border`` share of each side is left out: Farneback is unreliable where content enters
  or leaves the frame).
* :func:`mean_flow`: their mean over the clip, the "mean optical flow" of the paper.
* :func:`dynamic_degree`: the share of clips whose mean flow exceeds a threshold. The default,
  :func:`default_threshold`, is VBench's RAFT threshold scaled to the frame, ``6 * min(H, W) / 256``
  pixels; VBench counts frames above it per clip, this kit compares the clip's mean (a simplification,
  stated wherever the number is shown).

Known answers (``tests/test_opticalflow.py``): a textured frame shifted ``k`` pixels per frame gives
``k``, a still clip 0. :func:`render_frames` turns point trajectories ``(T, 2)`` (the ``motion-mix``
family) into a textured pan that moves exactly by the trajectory, so the image-based estimate can be
put beside the exact displacement (:func:`exact_flow`).
"""

from __future__ import annotations

import numpy as np
import torch

# cv2.calcOpticalFlowFarneback(prev, next, flow, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags)
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
             "flags": 0}
BORDER = 0.125  # share of each side left out of the mean


def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency of the kit
        raise ValueError("optical flow needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def grey_frames(frames) -> list[np.ndarray]:
    """A clip as 8-bit grey frames ``(H, W)``.

    ``frames``: ``(F, H, W)`` grey or ``(F, 3, H, W)`` RGB, floats in [0, 1] or uint8, tensor or array.
    Decoded video ``(3, F, H, W)`` is turned with ``frames.transpose(0, 1)`` first (see :func:`clip_frames`).
    """
    x = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 3):
        raise ValueError(f"frames must be (F, H, W) or (F, 3, H, W), got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise ValueError(f"a clip needs at least 2 frames for optical flow, got {len(x)}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("frames hold non-finite values")
    if x.ndim == 4:  # ITU-R 601 luma, as cv2.cvtColor(..., COLOR_RGB2GRAY)
        x = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(f) for f in x]


def clip_frames(video: torch.Tensor) -> torch.Tensor:
    """Decoded video ``(3, F, H, W)`` (the VAE's layout) -> ``(F, 3, H, W)``."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"decoded video must be (3, F, H, W), got shape {tuple(video.shape)}")
    return video.transpose(0, 1)


def farneback(frames) -> np.ndarray:
    """Dense flow between consecutive frames, ``(F - 1, H, W, 2)`` in pixels (x, y)."""
    cv2 = _cv2()
    g = grey_frames(frames)
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(g[:-1], g[1:])])


def frame_flows(frames, border: float = BORDER) -> np.ndarray:
    """Mean flow magnitude of each pair of consecutive frames over the interior, ``(F - 1,)`` pixels."""
    if not 0 <= border < 0.5:
        raise ValueError(f"border must be in [0, 0.5), got {border}")
    mag = np.linalg.norm(farneback(frames), axis=-1)  # (F - 1, H, W)
    h, w = mag.shape[1:]
    bh, bw = int(h * border), int(w * border)
    return mag[:, bh:h - bh, bw:w - bw].mean(axis=(1, 2))


def mean_flow(frames, border: float = BORDER) -> float:
    """The paper's mean optical flow of one clip: pixels per frame, averaged over frames and the interior."""
    return float(frame_flows(frames, border).mean())


def default_threshold(height: int, width: int) -> float:
    """VBench's dynamic-degree threshold scaled to the frame: ``6 * min(H, W) / 256`` pixels per frame."""
    return 6.0 * min(height, width) / 256.0


def dynamic_degree(flows, threshold: float) -> float:
    """Share of clips whose mean flow exceeds ``threshold`` (pixels per frame)."""
    v = np.asarray(list(flows), dtype=np.float64)
    if len(v) == 0:
        raise ValueError("dynamic degree needs at least one clip")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
    return float((v > threshold).mean())


# Known motion: a textured pan --------------------------------------------------------------------

def texture(size: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """Smooth random texture in [0, 255], ``(size, size)`` float32: what Farneback tracks well."""
    cv2 = _cv2()
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), blur)
    return (t - t.min()) / (t.max() - t.min()) * 255.0


def pan_frames(offsets, size: int, seed: int = 0) -> np.ndarray:
    """Frames ``(F, size, size)`` uint8 of one texture seen through a window at ``offsets`` ``(F, 2)`` pixels.

    The content moves by ``-(offsets[f + 1] - offsets[f])``, so the true flow magnitude of pair ``f`` is
    ``|offsets[f + 1] - offsets[f]|`` everywhere (sub-pixel offsets are interpolated bilinearly).
    """
    cv2 = _cv2()
    o = np.asarray(offsets, dtype=np.float64)
    if o.ndim != 2 or o.shape[1] != 2:
        raise ValueError(f"offsets must be (F, 2), got shape {tuple(o.shape)}")
    o = o - o.min(axis=0)
    margin = int(np.ceil(o.max())) + 2 if len(o) else 2
    big = texture(size + 2 * margin, seed)
    out = []
    for x, y in o:
        m = np.float32([[1, 0, -(x + 1)], [0, 1, -(y + 1)]])
        out.append(cv2.warpAffine(big, m, (size, size), flags=cv2.INTER_LINEAR))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def shifted_clip(k: float, frames: int = 5, size: int = 64, direction=(1.0, 0.0), seed: int = 0) -> np.ndarray:
    """A textured frame shifted ``k`` pixels per frame along ``direction``: flow ``k`` by construction."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    return pan_frames(np.arange(frames)[:, None] * k * d[None], size, seed)


def exact_flow(traj) -> float:
    """Exact mean displacement of a trajectory ``(T, 2)``: mean over frames of ``|p_{f+1} - p_f|`` (data units)."""
    p = torch.as_tensor(traj, dtype=torch.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 2:
        raise ValueError(f"a trajectory must be (T, 2) with T >= 2, got shape {tuple(p.shape)}")
    return float((p[1:] - p[:-1]).norm(dim=1).mean())


def render_frames(traj, size: int = 64, pixels_per_unit: float = 4.0, seed: int = 0) -> np.ndarray:
    """A point trajectory ``(T, 2)`` as ``T`` frames ``(T, size, size)`` uint8: a textured pan following it.

    Frame ``f`` shows the texture at ``p_f * pixels_per_unit``, so the exact flow in pixels is
    ``exact_flow(traj) * pixels_per_unit``.
    """
    p = np.asarray(torch.as_tensor(traj, dtype=torch.float64))
    exact_flow(p)  # checks the shape
    if not np.isfinite(p).all():
        raise ValueError("trajectory holds non-finite values")
    if pixels_per_unit <= 0:
        raise ValueError(f"pixels_per_unit must be > 0, got {pixels_per_unit}")
    return pan_frames(p * pixels_per_unit, size, seed)


def object_flow(frames, threshold: float = 0.5) -> float:
    """Mean flow magnitude over the moving object only: the pixels of frame ``f`` brighter than ``threshold``
    of its maximum (a bright object on a dark background, such as a rendered point), averaged over pairs."""
    g = grey_frames(frames)
    mag = np.linalg.norm(farneback(frames), axis=-1)
    vals = []
    for m, f in zip(mag, g[:-1]):
        mask = f > threshold * max(int(f.max()), 1)
        vals.append(float(m[mask].mean()) if mask.any() else 0.0)
    return float(np.mean(vals))


def trajectory_flow_table(trajs, render=None, pixels_per_unit: float = 4.0, border: float = BORDER) -> dict:
    """Farneback on trajectories rendered to frames, beside their exact displacement (pixels per frame).

    ``trajs``: ``(N, T, 2)``. ``render(traj) -> frames`` draws one trajectory at ``pixels_per_unit``
    pixels per data unit (default: :func:`render_frames`, a textured pan). Per clip: ``exact``
    (``exact_flow * pixels_per_unit``), ``estimate`` (interior mean, the video metric) and ``object``
    (:func:`object_flow`, over the bright object; meaningful for a dot on black). Means and the mean
    relative error of each estimate over the moving clips.
    """
    trajs = torch.as_tensor(trajs, dtype=torch.float64)
    if trajs.ndim != 3:
        raise ValueError(f"trajectories must be (N, T, 2), got shape {tuple(trajs.shape)}")
    if render is None:
        def render(t):
            return render_frames(t, 64, pixels_per_unit)
    exact, est, obj = [], [], []
    for t in trajs:
        frames = render(t)
        exact.append(exact_flow(t) * pixels_per_unit)
        est.append(mean_flow(frames, border))
        obj.append(object_flow(frames))
    e = np.asarray(exact)
    moving = e > 1e-9

    def rel(v):
        v = np.asarray(v)
        return float((np.abs(v - e)[moving] / e[moving]).mean()) if moving.any() else float("nan")

    return {"pixels_per_unit": pixels_per_unit, "exact": exact, "estimate": est, "object": obj,
            "exact_mean": float(e.mean()), "estimate_mean": float(np.mean(est)), "object_mean": float(np.mean(obj)),
            "rel_error": rel(est), "object_rel_error": rel(obj)}

"""Back into diffusers: a distilled LoRA student inside the stock pipeline, the way Lightning LoRAs run.

* :func:`load_student_adapters` reads a saved :class:`~pdmd_lab.backbones.lora.LoRAStudent`'s
  ``expert_k.safetensors`` with the pipeline's own ``load_lora_weights``.
* :func:`student_scheduler` swaps in a ``FlowMatchEulerDiscreteScheduler`` with no time shift, so
  the student's step times pass through unchanged as ``sigmas``.
* :class:`ExpertSwitch` is the ``callback_on_step_end`` that activates the expert of the next step
  (the pipeline calls it after step ``i``; the first expert is set before the call).
* :func:`run_student` does all three and calls the pipeline without CFG (it is distilled in).
* :func:`wan_two_expert_pipeline`: a 2-phase student of a single-transformer Wan model becomes a
  Wan2.2-style ``WanPipeline`` (``transformer`` = expert 1, ``transformer_2`` = expert 2,
  ``boundary_ratio`` between the phases); no callback needed.

Pipelines whose ``__call__`` takes no ``sigmas`` (``WanPipeline``) get the student's sigmas through
:func:`fixed_sigmas`, which pins ``scheduler.set_timesteps`` for the duration of one call.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from pdmd_lab import io
from pdmd_lab.backbones.students import LORA_KIND


def read_student_config(folder) -> dict:
    cfg = io.read_config(folder)
    if cfg.get("kind") != LORA_KIND:
        raise ValueError(f"{str(folder)!r} is not a LoRA student folder (its config says kind={cfg.get('kind')!r})")
    return cfg


def expert_route(boundaries, step_times) -> list[int]:
    """0-based expert of each step: a step starting at ``t in (t_k, t_{k-1}]`` uses expert k (as ``Student``)."""
    b = torch.as_tensor(boundaries, dtype=torch.float64)
    k = len(b) - 1
    return [int((b[1:] >= float(t) - 1e-9).sum().clamp(max=k - 1)) for t in list(step_times)[:-1]]


def student_sigmas(step_times) -> list[float]:
    """The ``sigmas`` argument: the student's step times without the final 0 (the scheduler appends it)."""
    return [float(t) for t in list(step_times)[:-1]]


def student_scheduler(pipe) -> None:
    """Replace the pipeline's scheduler with an unshifted ``FlowMatchEulerDiscreteScheduler``.

    The student's step times are already shifted; diffusers would shift given ``sigmas`` again.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False, shift_terminal=None, invert_sigmas=False,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, stochastic_sampling=False)


def load_student_adapters(pipe, folder) -> list[str]:
    """Load every expert adapter of a saved LoRA student into ``pipe`` (and ``transformer_2`` where saved)."""
    folder = Path(folder)
    cfg = read_student_config(folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # one adapter per expert is the point
        for name in cfg["experts"]:
            pipe.load_lora_weights(str(folder), weight_name=f"{name}.safetensors", adapter_name=name)
            second = folder / f"{name}_transformer_2.safetensors"
            if second.is_file():
                pipe.load_lora_weights(str(folder), weight_name=second.name, adapter_name=name,
                                       load_into_transformer_2=True)
    return list(cfg["experts"])


class ExpertSwitch:
    """``callback_on_step_end``: after step ``i``, activate the adapter that step ``i + 1`` uses."""

    def __init__(self, names_per_step: list[str]):
        self.names = list(names_per_step)
        self.used: list[str] = [self.names[0]]  # adapters active at each step, for checks

    def activate(self, pipe, name: str) -> None:
        for attr in ("transformer", "transformer_2"):
            model = getattr(pipe, attr, None)
            if model is not None and name in getattr(model, "peft_config", {}):
                model.set_adapters(name)

    def __call__(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        if i + 1 < len(self.names):
            self.activate(pipe, self.names[i + 1])
            self.used.append(self.names[i + 1])
        return {}


@contextmanager
def fixed_sigmas(scheduler, sigmas: list[float]):
    """Make ``scheduler.set_timesteps`` use ``sigmas`` whatever the pipeline asks (pipelines without ``sigmas``)."""
    original = scheduler.set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        original(device=device, sigmas=sigmas)

    scheduler.set_timesteps = set_timesteps
    try:
        yield scheduler
    finally:
        del scheduler.set_timesteps  # back to the class method


def _no_cfg_kwargs(pipe) -> dict:
    params = inspect.signature(pipe.__call__).parameters
    kwargs = {}
    if "true_cfg_scale" in params:  # Flux, Qwen-Image: true CFG off
        kwargs["true_cfg_scale"] = 1.0
    elif "guidance_scale" in params:  # SD3, Wan: guidance_scale <= 1 turns CFG off
        kwargs["guidance_scale"] = 1.0
    if "guidance_scale_2" in params and getattr(pipe.config, "boundary_ratio", None) is not None:
        kwargs["guidance_scale_2"] = 1.0
    return kwargs


def run_student(pipe, folder, *, load: bool = True, **call_kwargs):
    """Run the saved student in ``folder`` inside ``pipe``: its step times, its experts, no CFG.

    ``call_kwargs`` go to the pipeline (prompt or ``prompt_embeds``, ``latents``, ``output_type``...).
    Guidance-distilled models (Flux-dev) get the student's embedded ``guidance`` as ``guidance_scale``.
    Returns the pipeline's output; ``pipe._pdmd_switch.used`` lists the adapter of each step.
    """
    cfg = read_student_config(folder)
    if load:
        load_student_adapters(pipe, folder)
    student_scheduler(pipe)
    names = [cfg["experts"][k] for k in expert_route(cfg["boundaries"], cfg["step_times"])]
    switch = ExpertSwitch(names)
    switch.activate(pipe, names[0])
    sigmas = student_sigmas(cfg["step_times"])
    kwargs = {**_no_cfg_kwargs(pipe), "num_inference_steps": len(sigmas), "callback_on_step_end": switch}
    if cfg.get("guidance") is not None:
        kwargs["guidance_scale"] = cfg["guidance"]
    kwargs.update(call_kwargs)
    pipe._pdmd_switch = switch
    if "sigmas" in inspect.signature(pipe.__call__).parameters:
        return pipe(sigmas=sigmas, **kwargs)
    with fixed_sigmas(pipe.scheduler, sigmas):
        return pipe(**kwargs)


def wan_two_expert_pipeline(folder, *, base=None, dtype=None, **components):
    """A 2-phase LoRA student of a one-transformer Wan model as a Wan2.2-style two-expert ``WanPipeline``.

    ``transformer`` carries expert 1 (high noise), ``transformer_2`` expert 2 (low noise), both the
    base weights loaded from the student's base folder; ``boundary_ratio`` sits between the last
    step of phase 1 and the first of phase 2, so the pipeline's own routing (``t >= boundary``:
    ``transformer``) picks the right expert. ``components`` (text encoder, tokenizer, vae) are passed
    to ``WanPipeline``; the scheduler is the unshifted flow-matching Euler. Call it through
    :func:`run_student` with ``load=False`` (or set ``sigmas`` with :func:`fixed_sigmas`).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from pdmd_lab.backbones.adapters import find_model, load_transformer

    folder = Path(folder)
    cfg = read_student_config(folder)
    if len(cfg["experts"]) != 2:
        raise ValueError(f"the two-expert Wan mapping needs a 2-phase student, {str(folder)!r} has "
                         f"{len(cfg['experts'])} experts")
    if cfg["model_class"] != "WanTransformer3DModel":
        raise ValueError(f"the two-expert mapping is for WanTransformer3DModel students, got {cfg['model_class']}")
    model = find_model(base or cfg["base"])
    if model.subfolder_2 is not None:
        raise ValueError("the student's base already has two transformers; use run_student on its own pipeline")
    route = expert_route(cfg["boundaries"], cfg["step_times"])
    ts = student_sigmas(cfg["step_times"])
    last_high = min(t for t, k in zip(ts, route) if k == 0)
    first_low = max(t for t, k in zip(ts, route) if k == 1)
    high, low = (load_transformer(model, model.subfolder, dtype) for _ in range(2))
    for model, name in ((high, "expert_1"), (low, "expert_2")):  # folder + weight_name: the LoraConfig is read too
        model.load_lora_adapter(str(folder), weight_name=f"{name}.safetensors", adapter_name=name, prefix="transformer")
    components = {"vae": None, "text_encoder": None, "tokenizer": None, **components}
    return WanPipeline(transformer=high, transformer_2=low, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                       boundary_ratio=(last_high + first_low) / 2, **components)


# Decoding latents for metrics and figures -------------------------------------------------------------

def load_vae(folder, dtype=None):
    """The VAE of a local pipeline folder (``vae/``), loaded with ``from_pretrained``; ValueError when absent."""
    import json

    import diffusers

    root = Path(folder)
    index = root / "model_index.json"
    entry = json.loads(index.read_text()).get("vae") if index.is_file() else None
    if not entry or entry[1] is None or not (root / "vae" / "config.json").is_file():
        raise ValueError(f"{str(root)!r} has no VAE (a pipeline folder with vae/ is needed to decode latents)")
    return getattr(diffusers, entry[1]).from_pretrained(str(root), subfolder="vae", torch_dtype=dtype,
                                                        local_files_only=True)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], ``(B, 3, H, W)`` (video latents: ``(B, 3, F, H, W)``), as the pipelines do.

    SD3 / Flux VAEs (``scaling_factor``, ``shift_factor``); Wan / Qwen-Image VAEs (per-channel
    ``latents_mean`` / ``latents_std``; Qwen-Image images go through as one-frame videos).
    """
    cfg = vae.config
    x = latents.to(vae.device, vae.dtype)
    if getattr(cfg, "latents_mean", None) is not None:  # Wan / Qwen-Image
        image = x.ndim == 4
        if image:
            x = x[:, :, None]
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=x.device, dtype=x.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=x.device, dtype=x.dtype).view(shape)
        out = vae.decode(x * std + mean, return_dict=False)[0]
        out = out[:, :, 0] if image else out
    else:
        out = vae.decode(x / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0), return_dict=False)[0]
    return (out.float() / 2 + 0.5).clamp(0, 1)


def has_vae(folder) -> bool:
    """Whether ``folder`` is a pipeline folder with a VAE that :func:`load_vae` can load (reads JSON only)."""
    import json

    root = Path(folder)
    index = root / "model_index.json"
    try:
        entry = json.loads(index.read_text()).get("vae") if index.is_file() else None
    except ValueError:
        return False
    return bool(entry) and entry[1] is not None and (root / "vae" / "config.json").is_file()


def model_folder(model) -> str | None:
    """The diffusers folder a kit sampler of a real backbone was loaded from (a teacher or a student's base)."""
    for e in getattr(model, "experts", []):
        e = getattr(e, "backbone", e)
        path = getattr(getattr(e, "config", None), "path", None)
        if path and getattr(e.config, "model_class", ""):
            return str(path)
    return None


def decoder_folder(model, vae=None, out=None) -> str:
    """The pipeline folder whose VAE decodes ``model``'s latents: ``vae`` if given, else the model's own
    folder; ValueError (naming both ways out) when it has none, or when ``out`` is a ``.gif`` for images."""
    if out is not None and Path(out).suffix.lower() == ".gif" and len(getattr(model, "shape", ())) != 4:
        raise ValueError(f"{str(out)!r}: a GIF is for video models; these samples are images (use .png)")
    src = vae or model_folder(model)
    if src is None:
        raise ValueError("the model is not a diffusers backbone: nothing to decode")
    if not has_vae(src):
        raise ValueError(f"{str(src)!r} has no VAE to decode the latents (a pipeline folder with vae/ is needed): "
                         f"give --vae PIPELINE_FOLDER, or --out NAME.safetensors to write the latents")
    return str(src)


def write_gif(clips: torch.Tensor, path, *, duration_ms: int = 125) -> Path:
    """Decoded clips ``(N, 3, F, H, W)`` in [0, 1], side by side, as one looping animated GIF (Pillow)."""
    import numpy as np
    from PIL import Image

    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (N, 3, F, H, W), got shape {tuple(clips.shape)}")
    x = (clips.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, 3, F, H, W)
    n, _, f, h, w = x.shape
    gap = 2
    canvas = np.full((f, h, n * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        canvas[:, :, i * (w + gap):i * (w + gap) + w] = x[i].transpose(1, 2, 3, 0)
    frames = [Image.fromarray(c) for c in canvas]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path


def write_decoded(model, latents: torch.Tensor, path, *, vae=None, title: str = "") -> Path:
    """Decode a backbone sampler's latents with the local VAE and write them to ``path``.

    Images: a grid figure (``.png``, ``.jpg``, ``.pdf``, ``.svg``). Video: an animated ``.gif`` of the clips
    side by side, or for a still format a grid with one row per clip and one column per frame.
    """
    from pdmd_lab import viz

    x = decode_latents(load_vae(decoder_folder(model, vae)), latents)
    path = Path(path)
    video = x.ndim == 5
    if path.suffix.lower() == ".gif":
        if not video:
            raise ValueError(f"{str(path)!r}: a GIF is for video models; these samples are images (use .png)")
        return write_gif(x, path)
    if video:
        n, _, f = x.shape[:3]
        rows = {f"clip {i}": x[i].transpose(0, 1) * 2 - 1 for i in range(n)}  # (F, 3, H, W) per row
        fig = viz.image_grid_figure(rows, title=title or None, column_labels=[f"frame {k}" for k in range(f)])
    else:
        rows = {f"{i}-{min(i + 8, len(x)) - 1}": x[i:i + 8] * 2 - 1 for i in range(0, len(x), 8)}  # 8 a row
        fig = viz.image_grid_figure(rows, title=title or None)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path

"""Compare: the teacher at 50 and 4 steps and every distilled student side by side, same noise.

Its panels stream in as each is ready (the distilled students first, the full teacher last, with a
progress indicator); the teacher's outputs are cached per (family, class, seed, number of samples, CFG),
so a repeated click only re-runs the students. Discrete families (masked diffusion) get a D-MMD step
choice ``k``: the teacher at its full step count and at ``k`` and ``4k`` steps, the ``k``-step D-MMD student
with and without its noise input, and data.
"""

from __future__ import annotations

import threading
import time

import gradio as gr

from app import common
from app.common import (
    MAX_CFG,
    MAX_SAMPLES,
    SEED_MAX,
    TEACHER_STEPS,
    Zoo,
    _empty_panel,
    _float,
    _initial,
    _int,
    _labels,
    _measure,
    _panel,
    _safe,
    _sample_limits,
    data_samples,
    get_zoo,
    tv_floor,
)
from pdmd_lab.discrete.oracle import TokenOracle

# Compare -----------------------------------------------------------------------------------------

def _class_key(class_choice) -> str:
    return "all" if class_choice in (None, "", "all") else str(int(float(class_choice)))


def _teacher_key(family: str, key: str, class_choice, seed: int, n: int, cfg: float) -> tuple:
    return family, key, _class_key(class_choice), int(seed), int(n), round(float(cfg), 6)


def teacher_output(family: str, key: str, class_choice, seed: int, n: int, cfg: float):
    """The teacher's samples for a request, from :data:`common.TEACHER_CACHE` or computed (and cached).

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

    return common.TEACHER_CACHE.get_or_compute(cache_key, compute)


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
             and _teacher_key(family, key, class_choice, seed, n, cfg) in common.TEACHER_CACHE]
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


# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    z, families, default_family, default_panels = ctx.z, ctx.families, ctx.default_family, ctx.default_panels
    default_cfg, class_choices, discrete = ctx.default_cfg, ctx.class_choices, ctx.discrete
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


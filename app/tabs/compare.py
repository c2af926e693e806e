"""Compare: the teacher at 50 and 4 steps and every distilled student side by side, same noise.

Its panels stream in as each is ready (the distilled students first, the full teacher last, with a
progress indicator); every model's outputs are cached per (family, class, seed, number of samples,
CFG), so a repeated click only draws. Each panel is drawn and measured by the dataset's family. Datasets
whose students are not the fixed methods' (D-MMD's, for masked diffusion) get a step choice ``k``: the
teacher at its full step count and at ``k`` and ``4k`` steps, the ``k``-step students with and without
their noise input, and data.
"""

from __future__ import annotations

import threading
import time

import gradio as gr

from app import common, rows
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
    _measures,
    _panel,
    _safe,
    _sample_limits,
    data_samples,
    family_of,
    get_zoo,
    measures_legend,
)

# Compare -----------------------------------------------------------------------------------------

_teacher_key = rows.cache_key  # a model's samples for a request, in the cache Diversity shares


def teacher_output(family: str, key: str, class_choice, seed: int, n: int, cfg: float):
    """A model's samples for a request, from :data:`common.TEACHER_CACHE` or computed (and cached): the
    teacher's (``key`` ``teacher`` or ``teacher@k``, at ``cfg``) and, in Compare, the students' too, so a
    repeated click only draws. Students are deterministic given the seed, so a cached output is theirs.

    Returns ``(entry, cached)``, ``entry = {"x", "ms", "nfe", "labels"}`` (``ms``: warm, see :func:`_timed`).
    """
    z = get_zoo()
    model = z.sampler(family, key, cfg)
    labels = _labels(class_choice, n, model.num_classes)
    cache_key = _teacher_key(family, key, class_choice, seed, n, cfg)

    def compute():
        noise = _initial(model, seed, n)
        x, ms = _timed(lambda: model.sample(labels, seed=seed, noise=noise))
        return {"x": x, "ms": ms, "nfe": model.nfe, "labels": labels}

    return common.TEACHER_CACHE.get_or_compute(cache_key, compute)


def _timed(fn):
    """``(result, ms)`` of ``fn()``, timed warm: a call under a second (a student, a few-step teacher) is
    run again and the second run is timed, so a first call's set-up cost does not enter a speedup."""
    t0 = time.perf_counter()
    out = fn()
    ms = 1000 * (time.perf_counter() - t0)
    if ms < 1000:
        t0 = time.perf_counter()
        out = fn()
        ms = 1000 * (time.perf_counter() - t0)
    return out, ms


def _fmt(value) -> str:
    return value if isinstance(value, str) else f"{value:.3g}"


def _measures_text(measures: list, teacher: list | None) -> str:
    """One line per number: ``label **value** (direction; teacher's value)``."""
    ref = {m[0]: m[1] for m in teacher or []}
    lines = []
    for label, value, lower in measures:
        direction = {True: "lower is better", False: "higher is better"}.get(lower, lower or "")
        beside = f"teacher {_fmt(ref[label])}" if label in ref and teacher is not measures else ""
        note = "; ".join(p for p in (direction, beside) if p)
        lines.append(f"{label} **{_fmt(value)}**" + (f" ({note})" if note else ""))
    return "  \n".join(lines)


def _caption(r: dict, teacher: dict | None, full_steps: int = TEACHER_STEPS) -> str:
    """A panel's caption: title, cost (NFE, warm time, speedup over the full teacher), its numbers."""
    if r["nfe"] is None:
        cost = "no network (reference data)"
    else:
        speed = (f" · {teacher['ms'] / r['ms']:.1f}× vs {full_steps}-step teacher"
                 if teacher and teacher is not r else "")
        cost = f"NFE {r['nfe']} · {r['ms']:.0f} ms{speed}{r['note']}"
    return f"**{r['title']}**  \n{cost}  \n{_measures_text(r['measures'], teacher and teacher['measures'])}"


def _steps_choice(z: Zoo, family: str, steps) -> int | None:
    """The validated student step count ``k`` of a request: one of the dataset's shipped ``k`` (datasets laid
    out by step count, see :meth:`Zoo.step_choices`), None for the others."""
    choices = z.step_choices(family)
    if not choices:
        if steps not in (None, ""):
            raise gr.Error(f"student steps k apply only to datasets laid out by step count (D-MMD's); {family!r} "
                           f"shows fixed methods (got {steps!r}).")
        return None
    if steps in (None, ""):
        return z.default_steps(family)
    try:
        k = int(str(steps).strip())
    except ValueError:
        k = None
    if k not in choices:
        raise gr.Error(f"student steps k must be one of {', '.join(map(str, choices))} for {family} "
                       f"(the shipped students' step counts), got {steps!r}.")
    return k


def generate(family: str, class_choice, seed, num_samples, cfg, steps=None, progress=gr.Progress()):
    """Six panels from the same noise: teacher (50 steps), teacher (4 steps), DMD, DMD2-SGTS, Phased DMD, DP-DMD.

    Datasets laid out by step count (``steps`` = ``k``, default :meth:`Zoo.default_steps`; D-MMD's): the
    teacher at its full step count (100 for masked diffusion), ``k`` and ``4k`` steps, the ``k``-step students
    with and without their noise input, and data, all from the same initial state (same seed).

    A generator: the distilled students' panels come first, each as soon as it is sampled, then
    the few-step teachers, then the full teacher, whose caption counts the seconds while it runs
    (every model's outputs are cached per (family, class, seed, n, CFG), so a repeated click shows them
    at once, in one update). Every update holds 6 images, 6 captions and a summary; the last one holds
    them all. A caption
    gives the title, NFE, the warm time and speedup over the full teacher, and the family's numbers
    that show collapse (modes covered and mode KL for mixtures, exact TV for token pairs), each with
    its direction and the full teacher's value beside it. A panel without a model (``key`` empty) is
    hidden.
    """
    z = get_zoo()
    z.family(family)
    fam = family_of(family)  # the kind of data, resolved once: panels, numbers and notes come from it
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, _sample_limits(family)[0])
    cfg = _float(cfg, "teacher CFG", 0.0, MAX_CFG)
    k = _steps_choice(z, family, steps)
    teacher = z.models[family]["teacher"]
    full = z.full_steps(family)
    labels = _labels(class_choice, n, teacher.num_classes)
    panels = z.panels(family, k)
    images: list = [None] * 6
    captions: list = [f"**{title}**  \nwaiting…" if key else gr.update(value="", visible=False)
                      for key, title in panels]
    results: dict[int, dict] = {}  # panel -> {"title", "nfe", "ms", "measures", "note"}
    what = "all classes" if class_choice in (None, "", "all") else f"class {class_choice}"
    summary = (f"{family} ({fam.name}), {what}, seed {seed}, {n} sample(s), teacher CFG {cfg:g}"
               + (f", student steps k = {k}" if k is not None else "")
               + "; every panel starts from the same initial state (same seed). Times are of a warm run (a model "
               f"done in under a second is run twice and timed the second time); speedup = teacher ({full} steps) "
               "time / model time.")
    distilled = {float(m.meta["cfg"]) for key, m in z.models[family].items()
                 if key != "teacher" and isinstance(getattr(m, "meta", None), dict) and "cfg" in m.meta}
    if k is not None and distilled and cfg not in distilled:
        summary += f"  \nThe students were distilled at CFG {', '.join(f'{c:g}' for c in sorted(distilled))}."
    oracle = fam.oracle(family) if fam.has_oracle(family) else None
    if oracle is not None and isinstance(getattr(teacher, "model", None), type(oracle)):
        summary += ("  \nThe teacher is the exact oracle (a closed form, not a network): its times are not a "
                    "network's, so a distilled network can be slower than it.")
    note = fam.compare_note(family, labels)
    if note:
        summary += f"  \n{note}"
    head = summary

    def update(changed=()):
        """Only the changed panels travel; the caller's last update sends everything."""
        imgs = [images[i] if i in changed else gr.skip() for i in range(6)]
        return (*imgs, *captions, summary)

    def refresh():
        teacher_r = next((r for j, r in results.items() if panels[j][0] == "teacher"), None)
        for j, r in results.items():
            captions[j] = _caption(r, teacher_r, full)

    # Updates stream once a panel has to be computed; a request served from the cache is sent once, at the
    # end (each update costs the page an image encoding and a round trip). The page clears its panels
    # itself when Generate is clicked (clear_panels).
    stream, pending = False, set()

    def step(i):
        """The update after panel ``i`` when streaming (with the panels done before it), else nothing."""
        pending.add(i)
        if stream:
            out = update(pending)
            pending.clear()
            return [out]
        return []

    # Cached teacher panels first (instant), then the students (and data), then the teachers still to compute.
    ready = [i for i, (key, _) in enumerate(panels) if key.startswith("teacher")
             and _teacher_key(family, key, class_choice, seed, n, cfg) in common.TEACHER_CACHE]
    order = ready + [i for i, (key, _) in enumerate(panels) if key and not key.startswith("teacher")]
    order += [i for i, (key, _) in enumerate(panels) if key.startswith("teacher@") and i not in ready]
    order += [i for i, (key, _) in enumerate(panels) if key == "teacher" and i not in ready]
    for i in order:
        key, title = panels[i]
        model = z.sampler(family, key, cfg) if key != "data" else None
        entry = None
        if key == "data":  # reference draws: no network, so no time (loading a dataset is not sampling)
            t0 = time.perf_counter()
            try:  # seeded draws: cached like the models' outputs
                entry, cached = common.TEACHER_CACHE.get_or_compute(
                    _teacher_key(family, key, class_choice, seed, n, cfg),
                    lambda: {"x": data_samples(family, labels, seed)})
            except Exception as e:  # e.g. a dataset that cannot be loaded here: an empty panel, not an error
                images[i] = _empty_panel()
                captions[i] = f"**{title}**: not available ({e})"
                yield from step(i)
                continue
            x = entry["x"]
            if "measures" not in entry:
                entry["measures"] = _measures(family, x, labels)
            results[i] = {"title": title, "nfe": None, "ms": None, "measures": entry["measures"], "note": ""}
            stream = stream or time.perf_counter() - t0 > 0.2
        elif model is None:
            images[i] = _empty_panel()
            captions[i] = f"**{title}**: not available (`{family}/{key}` is not built yet)"
            yield from step(i)
            continue
        elif key.startswith("teacher"):
            estimate = None
            if key == "teacher":  # same network and batch: time scales with the steps
                done = [(int(panels[j][0].split("@")[1]), r["ms"]) for j, r in results.items()
                        if panels[j][0].startswith("teacher@")]
                if done:
                    estimate = max(ms_ / s_ for s_, ms_ in done) * full / 1000
            box: dict = {}
            worker = threading.Thread(target=lambda: box.update(
                out=_safe(teacher_output, family, key, class_choice, seed, n, cfg)), daemon=True)
            t0 = time.perf_counter()
            worker.start()
            worker.join(0.25)
            if worker.is_alive() and not stream:  # a teacher to compute: show what is done, then its progress
                stream = True
                yield update(pending)
                pending.clear()
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
            x = entry["x"]
            if "measures" not in entry:
                entry["measures"] = _measures(family, x, labels)
            results[i] = {"title": title, "nfe": entry["nfe"], "ms": entry["ms"], "measures": entry["measures"],
                          "note": " (cached: computed for an earlier request)" if cached else ""}
            stream = stream or not cached
        else:  # a student: cheap, computed here (no progress needed) and cached like the teacher
            entry, cached = teacher_output(family, key, class_choice, seed, n, cfg)
            x = entry["x"]
            if "measures" not in entry:
                entry["measures"] = _measures(family, x, labels)
            results[i] = {"title": title, "nfe": entry["nfe"], "ms": entry["ms"], "measures": entry["measures"],
                          "note": " (cached)" if cached else ""}
            stream = stream or not cached
        if entry is not None:  # the rendered panel is kept with the cached samples
            images[i] = entry.get("panel")
            if images[i] is None:
                images[i] = entry["panel"] = _panel(family, title, x, labels)
        else:
            images[i] = _panel(family, title, x, labels)
        refresh()
        shown = {m[0] for r in results.values() for m in r["measures"]}
        summary = head + (f"  \n{measures_legend(family, shown)}." if shown else "")
        yield from step(i)
    yield (*images, *captions, summary)


def warm_up(family: str | None = None) -> float:
    """Compute the default Compare view (the first family, every class, seed 0, the default number of
    samples and CFG) into the cache, so the first click shows it at once; returns the seconds it took.
    The app runs it in a background thread at start (``python -m app.app``); tests do not wait for it."""
    z = get_zoo()
    family = family or (z.families[0] if z.families else None)
    if family is None:
        return 0.0
    t0 = time.perf_counter()
    k = z.default_steps(family)
    try:
        for _ in generate(family, "all", 0, _sample_limits(family)[1], z.models[family]["teacher"].cfg,
                          None if k is None else str(k), progress=lambda *a, **kw: None):
            pass
    except Exception:  # a family that fails here fails on the page too, with its message; the others go on
        return float("nan")
    return time.perf_counter() - t0


def _count_label(family: str | None) -> str:
    most = _sample_limits(family)[0] if family else MAX_SAMPLES
    return f"number of samples (1..{most})"


def _class_choices(family: str | None) -> list[str]:
    """The class dropdown's choices for ``family``: ``all`` and its classes."""
    if family is None or family_of(family).is_unconditional(family):
        return ["all"]
    return ["all"] + [str(c) for c in range(get_zoo().models[family]["teacher"].num_classes)]


def panel_titles(family: str, steps=None) -> list:
    """Compare's six panels for ``family`` at D-MMD ``steps``: images cleared (hidden where no model is
    planned), then the six captions showing each panel's title."""
    z = get_zoo()
    panels = z.panels(family, _steps_choice(z, family, steps))
    return ([gr.update(value=None, visible=bool(key)) for key, _ in panels]
            + [gr.update(value=f"**{title}**", visible=bool(key)) for key, title in panels])


def compare_controls(family: str) -> list:
    """Compare's controls for a newly picked family: the student step choice (datasets laid out by k), the
    number of samples (thousands for points and token pairs), the teacher's CFG (1 for masked teachers),
    the family's classes, then the panels (see :func:`panel_titles`)."""
    z = get_zoo()
    z.family(family)
    choices = [str(k) for k in z.step_choices(family)]
    k = z.default_steps(family)
    steps = gr.update(choices=choices, value=None if k is None else str(k), visible=bool(choices))
    count = gr.update(value=_sample_limits(family)[1], label=_count_label(family))
    cfg = gr.update(value=z.models[family]["teacher"].cfg)
    klass = gr.update(choices=_class_choices(family), value="all")
    return [steps, count, cfg, klass, *panel_titles(family, k)]


def clear_panels(family, steps=None) -> list:
    """Generate's first step: every image emptied and every caption back to the bare title (numbers
    gone), and the summary emptied, so a request that fails leaves no panel of an earlier one."""
    try:
        return [*panel_titles(family, steps), ""]
    except Exception:  # a bad family or step choice: generate() says so; here empty everything
        return [gr.update(value=None)] * 6 + [gr.update(value="")] * 6 + [""]


# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    z, families, default_family, default_panels = ctx.z, ctx.families, ctx.default_family, ctx.default_panels
    default_cfg, compare_only = ctx.default_cfg, ctx.compare_only
    with gr.Tab("Compare", elem_id="tab-compare"):
        with gr.Row():
            family = gr.Dropdown(families, value=default_family, label="family", elem_id="family-dd")
            klass = gr.Dropdown(_class_choices(default_family), value="all", label="class",
                                allow_custom_value=True, elem_id="class-dd")
            default_k = z.default_steps(default_family) if default_family else None
            steps = gr.Dropdown(  # custom values allowed: generate() checks them against the family's
                [str(k) for k in z.step_choices(default_family)] if default_family else [],
                value=None if default_k is None else str(default_k), label="student steps k",
                allow_custom_value=True, visible=default_k is not None, elem_id="steps-dd")
            seed = gr.Number(0, label=f"seed (0..{SEED_MAX})", precision=None, elem_id="seed-num")
            count = gr.Number(_sample_limits(default_family)[1] if default_family else 16,
                              label=_count_label(default_family), precision=None, elem_id="count-num")
            cfg = gr.Number(default_cfg, label="teacher CFG (0..10)", elem_id="cfg-num")
        btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        gr.Markdown("Panels appear as each model finishes: the distilled students first (well under a second), "
                    "the full teacher last. Every model's samples are cached per family, class, seed, number "
                    "and CFG: clicking again shows them at once. Under each panel: the numbers that show "
                    "collapse for this family, with their direction and the full teacher's value beside."
                    + (f"  \nCompare only ({', '.join(compare_only)}): for masked diffusion, the D-MMD "
                       "student at k steps with and without its noise input against the teacher at k, 4k and "
                       "100 steps and data; the students were distilled at CFG 1. For ring-mix-tokens each "
                       "panel shows the joint histogram of the two tokens and the exact TV to the true joint."
                       if compare_only else ""))
        images, captions = [], []
        for row in (range(0, 3), range(3, 6)):
            with gr.Row(equal_height=False):
                for i in row:
                    key, title = default_panels[i]
                    with gr.Column(min_width=200):
                        # No label badge and no corner icons: they would sit on the panel's top corner (over
                        # MNIST's corner digits); the caption under it names the model.
                        images.append(gr.Image(show_label=False, buttons=[], type="filepath", format="png",
                                               interactive=False, visible=bool(key), elem_id=f"panel-{i}",
                                               elem_classes=["panel"]))
                        captions.append(gr.Markdown(f"**{title}**", visible=bool(key), elem_id=f"caption-{i}"))
        summary = gr.Markdown(elem_id="summary")
        btn.click(clear_panels, [family, steps], [*images, *captions, summary], queue=False,
                  show_progress="hidden").then(
            generate, [family, klass, seed, count, cfg, steps], [*images, *captions, summary],
            api_name="generate", show_progress_on=[images[0]])
        family.input(compare_controls, [family], [steps, count, cfg, klass, *images, *captions],
                     api_name="compare_controls")
        steps.input(panel_titles, [family, steps], [*images, *captions], api_name="panel_titles")

"""pdmd_lab in the browser: teacher vs DMD vs Phased DMD side by side, phases, diversity, live distillation.

Thin: every number and figure comes from the library (``pdmd_lab.zoo``, ``metrics``, ``embed``, ``viz``,
``distill``). Models load once, at start-up; a family or model missing from ``assets/models`` is
skipped with a note. Run ``python -m app.app [--host H] [--port P]`` (default 127.0.0.1:7860).

One module per tab in ``app/tabs/`` (``compare``, ``phases``, ``diversity``, ``distill_live``,
``collapse_lab``), each with its callbacks and a ``build(ctx)`` that lays it out; what they share (the
models, the teacher cache, validation, panels) is in ``app/common.py``. This file assembles them.

Compare answers at once: its panels stream in as each is ready (the distilled students first, the
50-step teacher last, with a progress indicator), and every model's outputs are cached per
(family, class, seed, number of samples, CFG), so a repeated click only draws; ``python -m app.app``
computes the default view in the background at start.

Every dataset is drawn and measured by its family (``pdmd_lab.families``: points, images, tokens,
trajectories, or a kind registered elsewhere), resolved once per request: a newly registered kind with
a shipped teacher and student appears in Compare with no change here. Datasets whose students are not
the ones of ``PANELS`` (the D-MMD students of ``ring-mix-tokens`` and ``mnist-binary``) get a step
choice ``k`` among their shipped students: the teacher at its full step count and at ``k`` and ``4k``
steps, the ``k``-step students with and without their noise input, and data. The other tabs are for the
flow-matching families.

API endpoints (``gradio_client``): ``/generate``, ``/phases``, ``/trajectory``, ``/diversity``,
``/class_view``, ``/distill``, ``/collapse_lab``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import threading  # noqa: E402
from types import SimpleNamespace  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="pdmd_lab Gradio app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PDMD_APP_THREADS", "1")),
                        help="torch intra-op threads and BLAS threads (default 1: the models are small, and requests "
                             "run in parallel)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not compute each family's default Compare view (and Diversity's first view) in the "
                             "background at start")
    return parser


if __name__ == "__main__":  # the default views' teacher is drawn while Gradio, the models and the tabs load
    _args = _parser().parse_args()  # --help and bad values answered before anything loads
    if not _args.no_warm_up:
        from app import early

        early.start(threads=max(1, _args.threads))

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from app import common, live, rows  # noqa: E402
from app.common import (  # noqa: E402,F401  (re-exported: the app's public names, as before the split)
    DEFAULT_PAIR_SAMPLES,
    LAB_DEFAULTS,
    PANELS,
    STUDENTS,
    TEACHER_CACHE,
    TeacherCache,
    Zoo,
    get_zoo,
    shipped_families,
)
from app.live import collapse_lab, distill_live  # noqa: E402,F401
from app.tabs import TABS, compare  # noqa: E402
from app.tabs.compare import compare_controls, generate, panel_titles, teacher_output  # noqa: E402,F401
from app.tabs.diversity import class_view, diversity, draw_samples  # noqa: E402,F401
from app.tabs.diversity import warm_up as diversity_warm_up  # noqa: E402
from app.tabs.phases import phases, trajectory  # noqa: E402,F401


def layout_context(z: Zoo) -> SimpleNamespace:
    """What the tabs' layouts share: the families, their defaults and the students offered."""
    families = z.families
    default_family = rows.default_family(families)
    default_panels = z.panels(default_family) if default_family else PANELS
    default_cfg = z.models[default_family]["teacher"].cfg if default_family else 3.0
    others = z.continuous_families()  # the tabs besides Compare
    default_other = rows.default_family(others)
    shipped = {k for f in others for k in z.students(f)}
    students = [k for k in STUDENTS if k in shipped] + sorted(shipped - set(STUDENTS))
    compare_only = [f for f in families if f not in others]  # e.g. masked diffusion (D-MMD)
    notes = "  \n".join(f"- {n}" for n in z.notes)
    lab_choices = list(live.method_presets())  # the registry as it is now
    lab_a, lab_b = [m if m in lab_choices else lab_choices[min(i, len(lab_choices) - 1)]
                    for i, m in enumerate(LAB_DEFAULTS)]
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "z"}, z=z)


# Page styles (Gradio takes them at launch): table headers and cells never break inside a word ("NF E"); a wide
# table scrolls instead.
CSS = """
.nowrap-table th, .nowrap-table td { white-space: nowrap; }
.nowrap-table table { display: block; overflow-x: auto; }
"""


def build_app() -> gr.Blocks:
    """The Gradio Blocks of the app (models load here, once)."""
    ctx = layout_context(get_zoo())
    compare_only, notes = ctx.compare_only, ctx.notes
    with gr.Blocks(title="pdmd_lab: Phased DMD explorer") as demo:
        gr.Markdown("# pdmd_lab: few-step distillation, side by side\n"
                    "Teacher (50 Euler steps) vs DMD vs DMD2-SGTS vs **Phased DMD** vs DP-DMD, same noise, same class"
                    + (f"; and in Compare, {', '.join(compare_only)}." if compare_only else "."))
        if notes:
            gr.Markdown(f"<details><summary>Model notes</summary>\n\n{notes}\n</details>")
        for tab in TABS:
            tab.build(ctx)
    return demo


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    import sklearn.manifold  # noqa: F401  (loads scikit-learn's OpenMP and scipy's BLAS: the limit below reaches them)
    threadpool_limits(max(1, args.threads))  # their threads too (PCA, t-SNE, Frechet distances: small matrices)
    if not args.no_warm_up:  # the default views, cached while the page is built and loads (the page's family first)
        ctx = layout_context(get_zoo())
        first = ctx.default_family
        order = [first] + [f for f in get_zoo().families if f != first] if first else []

        def warm_up():  # Compare's first view, then Diversity's (and its full evaluation's teacher), then the rest
            for i, f in enumerate(order):
                if i == 0:  # its full teacher first, rows split over the cores, under Compare's key for the view
                    try:
                        draw_samples(f, ["teacher"], 0, common._sample_limits(f)[1])
                    except Exception:  # Compare's warm-up below draws it (and says what fails on the page)
                        pass
                compare.warm_up(f)
                if i == 0 and ctx.default_other is not None:
                    diversity_warm_up(ctx.default_other)

        threading.Thread(target=warm_up, daemon=True, name="warm-up").start()
    demo = build_app()
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, css=CSS)


if __name__ == "__main__":
    main()

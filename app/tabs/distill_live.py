"""Distill live: a ring-mix student distilled from the exact oracle teacher while you watch
(the training itself is :func:`app.live.distill_live`).
"""

from __future__ import annotations

import gradio as gr

from app.live import DISTILL_INIT_ITERS, MAX_DISTILL_ITERS, distill_live

# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    lab_choices, lab_b = ctx.lab_choices, ctx.lab_b
    with gr.Tab("Distill live", elem_id="tab-distill"):
        gr.Markdown("Distill a **ring-mix** student from the exact oracle teacher, live on the CPU. A session's "
                    f"first run starts by fitting the starting network ({DISTILL_INIT_ITERS} iterations, once); "
                    "then about 20 s per 100 iterations on a free core, several times that on a busy machine: "
                    "the status shows your run's rate. Method names as in the README and the studies.")
        with gr.Row():
            l_method = gr.Dropdown(lab_choices, value=lab_b, label="method")
            l_cfg = gr.Number(3.0, label="CFG (0..10)")
            l_iters = gr.Number(200, label=f"iterations (4..{MAX_DISTILL_ITERS})", precision=None)
            l_compare = gr.Checkbox(True, label="compare with the shipped models at the end")
            l_btn = gr.Button("Distill", variant="primary")
        l_status = gr.Markdown()
        # Stacked, full width: the final comparison has up to 7 panels. No label badges over the plots' titles.
        gr.Markdown("**Student samples** (at the end: beside the shipped models)")
        l_scatter = gr.Plot(show_label=False, elem_id="distill-scatter")
        gr.Markdown("**Training curves**")
        l_curves = gr.Plot(show_label=False, elem_id="distill-curves")
        l_state = gr.State(None)
        l_btn.click(distill_live, [l_method, l_cfg, l_iters, l_compare], [l_scatter, l_curves, l_status, l_state],
                    api_name="distill")


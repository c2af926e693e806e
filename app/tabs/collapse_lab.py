"""Collapse lab: two methods trained side by side on ring-mix, their mode coverage, mode KL and
within-class diversity measured while they train (:func:`app.live.collapse_lab`).
"""

from __future__ import annotations

import gradio as gr

from app.live import MAX_LAB_ITERS, collapse_lab

# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    lab_choices, lab_a, lab_b = ctx.lab_choices, ctx.lab_a, ctx.lab_b
    with gr.Tab("Collapse lab", elem_id="tab-lab"):
        gr.Markdown("Train **two methods side by side** on ring-mix (exact oracle teacher, CFG as set) and watch "
                    "mode collapse happen: samples at fixed noise, and per method the mode coverage, the KL of "
                    "its mode histogram against the teacher's and its within-class diversity "
                    "(`DiversityMonitor`), measured while it trains. Colours: in the scatters, the four classes "
                    "(blue, orange, green, red); in the curves, the methods (**A** black, **B** purple, each "
                    "scatter's title in its method's colour) and the teacher (grey, dashed).")
        with gr.Row():
            m_a = gr.Dropdown(lab_choices, value=lab_a, label="method A", elem_id="lab-a")
            m_b = gr.Dropdown(lab_choices, value=lab_b, label="method B", elem_id="lab-b")
            m_cfg = gr.Number(3.0, label="CFG (0..10)")
            m_iters = gr.Number(120, label=f"generator updates each (4..{MAX_LAB_ITERS})", precision=None,
                                elem_id="lab-iters")
            m_btn = gr.Button("Train both", variant="primary", elem_id="lab-btn")
        m_status = gr.Markdown(elem_id="lab-status")
        with gr.Row():  # no label badges: they would cover the scatters' titles (method, update, coverage)
            m_scatter_a = gr.Plot(show_label=False, elem_id="lab-scatter-a")
            m_scatter_b = gr.Plot(show_label=False, elem_id="lab-scatter-b")
        gr.Markdown("**Diversity and coverage while training**")
        m_curves = gr.Plot(show_label=False, elem_id="lab-curves")
        m_btn.click(collapse_lab, [m_a, m_b, m_cfg, m_iters], [m_scatter_a, m_scatter_b, m_curves, m_status],
                    api_name="collapse_lab")

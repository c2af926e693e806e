"""Phases: step times and phase subintervals on the log-SNR axis; trajectories of a student against
the teacher cut to 4 steps, and an animation of the student's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from app.common import SEED_MAX, _continuous_family, _float, _int, _labels, _noise, get_zoo
from pdmd_lab import flow, viz
from pdmd_lab.data import get_dataset

INTUITION_DATASET = "ring-mix"  # a 2D mixture with an exact teacher: the denoiser figure of the Phases tab


def phases(steps, num_phases, shift):
    """Step times and phase subintervals for ``steps`` Euler steps split into ``num_phases`` phases."""
    steps = _int(steps, "steps", 1, 64)
    k = _int(num_phases, "phases", 1, 64)
    shift = _float(shift, "shift", 0.05, 20.0)
    if k > steps or steps % k:
        raise gr.Error(f"phases must divide steps: {k} phase(s) cannot split {steps} step(s) evenly "
                       f"(try {', '.join(str(d) for d in range(1, steps + 1) if steps % d == 0)}).")
    ts = flow.step_times(steps, shift)
    bounds = flow.phase_boundaries(steps, k, shift)
    rows = sorted({1, k} | ({2} if steps % 2 == 0 and k != 2 and steps >= 2 else set()))
    fig_p = viz.phases_figure(steps, phase_counts=tuple(rows), shift=shift)
    for ax in fig_p.axes:  # room for the end labels "t=1.00" / "t=0.00" at log-SNR -/+ infinity
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo - 1.2, hi + 1.2)
        for label in ax.texts:
            label.set_clip_on(False)
    fig_s = viz.snr_figure(ts, bounds, shifts=(shift,))
    text = ("step times t: " + ", ".join(f"{t:.3f}" for t in ts.tolist()) + "  \nphase boundaries: "
            + ", ".join(f"{b:.3f}" for b in bounds.tolist()) + f"  \n{steps // k} step(s) per phase")
    # Why one expert per subinterval: what the exact ring-mix teacher predicts along t, coloured by phase.
    fig_d = viz.denoiser_figure(get_dataset(INTUITION_DATASET).gmm, boundaries=bounds, n=200,
                                title=f"{INTUITION_DATASET}: the exact teacher's prediction of clean data along t, "
                                      f"coloured by the phase (expert) that owns t")
    return fig_p, fig_s, text, fig_d


ANIMATION_DIR = Path(tempfile.gettempdir()) / "pdmd_lab_app"


def trajectory(family: str, student: str, class_choice, seed, num_samples):
    """Trajectories of a student and of the teacher cut to 4 steps, from the same noise, then an
    animation of the student's (GIF: samples moving from noise to data, coloured by expert).

    A generator: the two figures first, the animation (a few seconds to render) after them.
    """
    z = get_zoo()
    _continuous_family(z, family)
    seed = _int(seed, "seed", 0, SEED_MAX)
    n = _int(num_samples, "number of samples", 1, 32)
    model = z.sampler(family, student)
    if model is None:
        raise gr.Error(f"{family}/{student} is not available (not built yet).")
    teacher = z.sampler(family, "teacher@4")
    labels = _labels(class_choice, n, model.num_classes)
    noise = _noise(seed, n, model.shape)
    figs, trajs = [], []
    for m in (model, teacher):
        _, traj = m.sample(labels, seed=seed, noise=noise, return_trajectory=True)
        ts = m.step_times
        experts = [m.expert_index(float(t)) for t in ts[:-1]]
        trajs.append((traj, experts, ts))
        figs.append(viz.trajectory_figure(traj, experts, labels=labels, dataset=family, step_times=ts))
    yield figs[0], figs[1], gr.skip()
    traj, experts, ts = trajs[0]
    anim = viz.trajectory_animation(traj, experts, labels=labels, dataset=family, step_times=ts,
                                    title=f"{family}/{student}")
    ANIMATION_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkstemp(suffix=".gif", prefix="trajectory_", dir=ANIMATION_DIR)[1])
    viz.animation_to_gif(anim, path)
    yield figs[0], figs[1], str(path)


def _class_update(family: str, with_all: bool = True):
    """The class dropdown for a newly picked family: (``all`` and) its classes."""
    classes = [str(c) for c in range(get_zoo().family(family)["teacher"].num_classes)]
    return gr.update(choices=(["all"] if with_all else []) + classes, value="all" if with_all else classes[0])


# Layout ----------------------------------------------------------------------------------------

def build(ctx) -> None:
    """The tab, inside the app's ``gr.Blocks`` (``ctx``: see ``app.app.layout_context``)."""
    others, default_other, students = ctx.others, ctx.default_other, ctx.students
    with gr.Tab("Phases", elem_id="tab-phases"):
        with gr.Row():
            p_steps = gr.Number(4, label="steps", precision=None)
            p_phases = gr.Number(4, label="phases (must divide steps)", precision=None)
            p_shift = gr.Number(1.0, label="time shift")
            p_btn = gr.Button("Show phases", variant="primary")
        # Drawn at load for the default settings; no label badges over the figures' own titles.
        fig_p, fig_s, text, fig_d = phases(4, 4, 1.0)
        gr.Markdown("**Phases on the log-SNR axis**")
        p_fig = gr.Plot(fig_p, show_label=False, elem_id="phases-fig")
        gr.Markdown("**SNR and log-SNR**")
        s_fig = gr.Plot(fig_s, show_label=False, elem_id="snr-fig")
        p_text = gr.Markdown(text, elem_id="phases-text")
        gr.Markdown("**Why one expert per subinterval.** At high noise (t near 1) the exact teacher can only "
                    "predict the data's mean (the white star); at low noise it pulls each point to a mode. The "
                    "velocity field an expert must learn changes in kind along t: each phase's expert learns "
                    "one regime (predictions and frames in its phase's colour).")
        d_fig = gr.Plot(fig_d, show_label=False, elem_id="denoiser-fig")
        p_btn.click(phases, [p_steps, p_phases, p_shift], [p_fig, s_fig, p_text, d_fig], api_name="phases",
                    show_progress="hidden")  # instant; an error is a message, not a box left over the plots
        gr.Markdown("### Trajectories: a student vs the teacher cut to 4 steps (same noise), and an animation\n"
                    "The animation moves the student's samples from noise to data step by step, each step in the "
                    "colour of the expert that takes it.")
        with gr.Row():
            t_family = gr.Dropdown(others, value=default_other, label="family")
            t_student = gr.Dropdown(students, value="phased-dmd-4s4p" if "phased-dmd-4s4p" in students else
                                    (students[0] if students else None), label="student")
            t_class = gr.Dropdown(_class_update(default_other)["choices"] if default_other else ["all"], value="all",
                                  label="class", allow_custom_value=True)
            t_seed = gr.Number(0, label="seed", precision=None)
            t_n = gr.Number(6, label="samples (1..32)", precision=None)
            t_btn = gr.Button("Show trajectories", variant="primary", elem_id="trajectory-btn")
        with gr.Row():
            with gr.Column():
                gr.Markdown("**The student**")
                t_fig_s = gr.Plot(show_label=False, elem_id="trajectory-student")
            with gr.Column():
                gr.Markdown("**The teacher cut to 4 steps**")
                t_fig_t = gr.Plot(show_label=False, elem_id="trajectory-teacher")
        gr.Markdown("**The student's trajectory, animated** (noise → data, coloured by expert)")
        # The GIF (one row of samples) over the page's width: large enough to follow each sample.
        t_anim = gr.Image(show_label=False, buttons=["download"], type="filepath", format="gif", interactive=False,
                          elem_id="trajectory-anim")
        t_family.input(_class_update, [t_family], [t_class])
        t_btn.click(trajectory, [t_family, t_student, t_class, t_seed, t_n], [t_fig_s, t_fig_t, t_anim],
                    api_name="trajectory", show_progress_on=[t_anim])


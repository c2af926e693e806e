"""Figures that take data and return a :class:`matplotlib.figure.Figure`; nothing here trains.

Every function builds a fresh ``Figure`` through matplotlib's object-oriented API, never through
``pyplot``: no global figure registry, no GUI backend, so the same code runs headless in the CLI,
inside Gradio request threads and in notebooks (where a returned figure is displayed by the inline
backend). Save with ``fig.savefig(path)``.

Colours mean the same thing everywhere: classes use ``tab10`` (class c is colour c), methods
have fixed colours and markers (:func:`method_colors`, :func:`method_markers`; two models of one
family get two shades of its colour), experts and phases run along ``plasma`` from noise to
data. Phases and experts are numbered from 1 in every label ("phase 1..K", "expert 1..K"), as in
the paper; ``Student.expert_index`` is 0-based.

The figures live in submodules by subject (:mod:`~pdmd_lab.viz.base`, :mod:`~pdmd_lab.viz.schedule`,
:mod:`~pdmd_lab.viz.samples`, :mod:`~pdmd_lab.viz.trajectories`, :mod:`~pdmd_lab.viz.curves`,
:mod:`~pdmd_lab.viz.animation`); every name is importable from ``pdmd_lab.viz``.
"""

from pdmd_lab.viz.animation import (  # noqa: F401
    _frame_plan,
    animation_to_gif,
    denoiser_animation,
    trajectory_animation,
)
from pdmd_lab.viz.base import (  # noqa: F401
    _EXTRA_COLORS,
    _SHADES,
    LOGSNR_CLIP,
    METHOD_COLORS,
    METHOD_MARKERS,
    PHASE_SHADES,
    _class_handles,
    _clipped_logsnr,
    _draw_modes,
    _grid,
    _labels_np,
    _new_figure,
    _np,
    _scatter_classes,
    _shade,
    _shade_phases,
    _square_limits,
    class_color,
    expert_colors,
    method_colors,
    method_markers,
)
from pdmd_lab.viz.curves import (  # noqa: F401
    _BOOKKEEPING,
    _default_class_scores,
    _is_number,
    class_embedding_figure,
    embedding_figure,
    metrics_bar_figure,
    read_log,
    training_curves_figure,
)
from pdmd_lab.viz.samples import (  # noqa: F401
    _gmm_of,
    _imshow,
    image_grid_array,
    image_grid_figure,
    samples_figure,
    scatter_figure,
)
from pdmd_lab.viz.schedule import (  # noqa: F401
    _unshift,
    phases_figure,
    snr_figure,
)
from pdmd_lab.viz.trajectories import (  # noqa: F401
    _data_mean,
    _draw_prediction,
    _phase_of,
    denoiser_figure,
    denoiser_predictions,
    trajectory_figure,
)

"""Figures of token samples now live with their family: :mod:`pdmd_lab.families.tokens`
(``family.render_panel`` / ``render_grid`` / ``default_figure``). These names are kept for callers that
have not moved yet."""

from pdmd_lab.families.tokens import grid_figure, joint_figure, samples_figure, steps_comparison_figure

__all__ = ["grid_figure", "joint_figure", "samples_figure", "steps_comparison_figure"]

"""``phased-dmd-disjoint``: Phased DMD with disjoint ``t`` ranges, a method added through the public API only.

Phase k draws ``t ~ U(t_k, t_{k-1})`` for its DMD gradient and its fake score, instead of the nested
``U(t_k, 1)``. The Phased DMD paper (§3.3) reports that disjoint ranges break the outputs: the fake
score and the real score are then compared only near the phase's own noise levels, and nothing ties
the expert's output to the structure that higher noise levels see. This file is also the example of
how a user adds a method: subclass, change what differs, register.
"""

from __future__ import annotations

from pdmd_lab.distill.methods import PhasedDMD, register_method


@register_method
class PhasedDMDDisjoint(PhasedDMD):
    """Phased DMD whose phase k draws ``t`` only inside its own subinterval ``(t_k, t_{k-1})``."""

    name = "phased-dmd-disjoint"
    summary = "Phased DMD ablation: disjoint t ranges U(t_k, t_{k-1})"

    def t_range(self, s, phase):
        hi = min(self.boundaries()[phase], self.options.t_max)
        return max(s, self.options.t_min), hi

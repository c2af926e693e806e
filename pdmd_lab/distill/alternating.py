"""``phased-dmd-alternating``: Phased DMD's experts trained in turn from the start, one region per iteration.

The Phased DMD paper trains its K phases one after another (progressive): phase k starts once
experts 1..k-1 are finished and frozen, with a fresh fake score. The only public Phased DMD trainer
(LightX2V's ``phased_dmd``, with K = 2 regions) instead alternates: from the first iteration it
switches region every iteration, and each region keeps its own fake score (and optimizers) for the
whole run. This method is that schedule for any K: iteration i trains region ``i mod K``; the
rollout, the nested ``t`` ranges and the subinterval fake-score target are Phased DMD's, so the
experts upstream of region k are the current (still training) ones, frozen for that update.

It changes nothing but the schedule (:meth:`~pdmd_lab.distill.methods.Method.phase_at`) and asks the
trainer to keep each region's critic (``revisits_phases``), which is how a method adds a schedule.
"""

from __future__ import annotations

from pdmd_lab.distill.methods import PhasedDMD, register_method


@register_method
class PhasedDMDAlternating(PhasedDMD):
    """Phased DMD whose K experts are trained in turn, region ``i mod K`` at iteration i, a fake score each."""

    name = "phased-dmd-alternating"
    summary = "Phased DMD with alternating regions (one per iteration, a fake score each), as LightX2V trains it"
    revisits_phases = True

    def phase_at(self, it: int, iters: int) -> int:
        return it % self.num_phases

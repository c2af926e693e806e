"""Distillation: the method registry, losses, rollouts and the one trainer (``docs/methods.md``)."""

from pdmd_lab import flow  # the flow helpers a method needs: add_noise, x0_from_velocity, ...
from pdmd_lab.distill import alternating, disjoint  # noqa: E402,F401  (register phased-dmd-alternating, -disjoint)
from pdmd_lab.distill.methods import (
    METHODS,
    DMDFamily,
    DMDOptions,
    Draw,
    Method,
    MethodOptions,
    PhasedDMD,
    get_method,
    register_method,
)
from pdmd_lab.distill.rollouts import Rollout
from pdmd_lab.distill.trainer import (
    DistillConfig,
    Distiller,
    GaussianPrior,
    build_distiller,
    distill,
    register_teacher_loader,
)

__all__ = ["METHODS", "DMDFamily", "DMDOptions", "DistillConfig", "Distiller", "Draw", "GaussianPrior", "Method",
           "MethodOptions", "PhasedDMD", "Rollout", "build_distiller", "distill", "flow", "get_method",
           "register_method", "register_teacher_loader"]

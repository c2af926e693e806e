"""Distillation: losses, rollouts and the one trainer for DMD, DMD2-SGTS, Phased DMD and DP-DMD."""

from pdmd_lab.distill.trainer import METHODS, DistillConfig, Distiller, distill

__all__ = ["METHODS", "DistillConfig", "Distiller", "distill"]

"""Masked (discrete) diffusion and its distillation, D-MMD (DMMD.md).

* :mod:`~pdmd_lab.discrete.masking`: forward masking, the reveal posterior, the k-step ancestral sampler.
* :mod:`~pdmd_lab.discrete.oracle`: the exact two-token oracle (``ring-mix-tokens``).
"""

"""Masked (discrete) diffusion and its distillation, D-MMD (``docs/conventions.md`` §3).

* :mod:`~pdmd_lab.discrete.masking`: forward masking, the reveal posterior, the k-step ancestral sampler.
* :mod:`~pdmd_lab.discrete.oracle`: the exact two-token oracle (``ring-mix-tokens``).
* :mod:`~pdmd_lab.discrete.nets`: the token networks (toy MLP, diffusers UNet for binarised MNIST).
* :mod:`~pdmd_lab.discrete.teacher`: MDLM teacher training and loading.
* :mod:`~pdmd_lab.discrete.dmmd`: the D-MMD losses; :mod:`~pdmd_lab.discrete.method`: the ``d-mmd``
  method of the distillation engine (registered on import, with the masked sampler and teacher loader).
* :mod:`~pdmd_lab.discrete.metrics`: exact TV / KL of the toy's joint, binarised-MNIST metrics.

What the faces need to know about token data (the prior, rendering, the evaluate table, the comparison
figure) is the ``tokens`` family's, :mod:`pdmd_lab.families.tokens`; the token joint tables live with the
data (:class:`pdmd_lab.data.TokenJoint`). Teachers train through the shared loop
(:func:`pdmd_lab.teacher.train_denoiser`).
"""

from pdmd_lab.discrete import method  # noqa: E402,F401  (registers d-mmd, the sampler, the teacher loader)
from pdmd_lab.discrete.method import DMMD, DataPrior, MaskedTeacherSampler, load_masked_sampler  # noqa: E402

__all__ = ["DMMD", "DataPrior", "MaskedTeacherSampler", "load_masked_sampler"]

"""Families: one object per kind of data (points, images, tokens, latents), registered like methods.

See :mod:`pdmd_lab.families.base` for the :class:`Family` interface and ``docs/families.md`` for how to add
one. Importing this package registers the kit's own families.
"""

from pdmd_lab.families.base import FAMILIES, Family, Metric, get_family, register_family

__all__ = ["FAMILIES", "Family", "Metric", "get_family", "register_family"]

# The kit's families register on import (motion: "trajectories", the motion-mix dataset).
from pdmd_lab.families import points, images, tokens, motion, latents  # noqa: E402,F401,I001

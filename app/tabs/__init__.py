"""The app's tabs, one module each: callbacks plus a ``build(ctx)`` that lays the tab out."""

from app.tabs import collapse_lab, compare, distill_live, diversity, phases

TABS = (compare, phases, diversity, distill_live, collapse_lab)  # in page order

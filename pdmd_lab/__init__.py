"""pdmd_lab."""

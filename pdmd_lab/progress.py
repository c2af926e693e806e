"""Progress on long steps: something on the screen at least every 10 seconds.

A step that runs for minutes without a word (fitting a starting net, sampling a teacher, one run of a
study) looks hung. :func:`heartbeat` wraps such a step: given a tqdm bar it refreshes the bar every
``every`` seconds, so its elapsed time moves even while one update takes long; given a description it
prints ``<description>: still working (N s)`` to stderr every ``every`` seconds. Nothing is printed for a
step shorter than ``every``. This module imports nothing of the kit.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

EVERY_S = 10.0


@contextmanager
def heartbeat(what, *, every: float = EVERY_S, enabled: bool = True, stream=None):
    """Refresh the tqdm bar ``what`` (or print a line naming the step ``what``) every ``every`` seconds."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    t0 = time.time()

    def beat():
        while not stop.wait(every):
            if hasattr(what, "refresh"):
                what.refresh()
            else:
                print(f"{what}: still working ({time.time() - t0:.0f} s)", file=stream or sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="pdmd-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

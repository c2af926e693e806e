"""The app's first draw, in a process of its own, started before the app loads anything.

``python -m app.app`` calls :func:`start` first. A child process (``python -m app.early``) loads the
default family's teacher and draws the default Compare view's rows (its full teacher, seed 0, all
classes), then, at a lower priority (:data:`BACKGROUND_NICE`), the further rows of Diversity's default
view (its full evaluation's reference), while the app imports Gradio, loads its models and builds the
page (about 20 s of one core). A process, not a thread: the app's start is Python code holding the
interpreter's lock, which a drawing thread needs between any two network layers, and the app's own
work goes before the background rows only when the operating system can tell them apart. The app's
warm-up takes the rows with :func:`take` under Compare's and Diversity's cache keys instead of drawing
them again, and counts their progress with :func:`count`.

Nothing here imports Gradio, and torch only where an entry arrives. The child speaks on its standard
output, one line per message: ``keys <json>`` (the cache keys of its entries, in order), ``done <i> <k>``
(``k`` more sample-steps of entry ``i``), ``entry <i> <bytes>`` followed by the entry saved with
``torch.save``, or ``error <message>``. It stops when the app does (its standard input closes).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

DEFAULT_FAMILY = "mnist"  # the page's family when it is shipped (else the first family shown)
DIVERSITY_N = 100  # Diversity's samples per model by default: its full evaluation's reference is the full teacher's
BACKGROUND_NICE = 10  # the rows beyond Compare's: they use the cores the app's own work leaves idle
KEYS_TIMEOUT_S = 60.0  # how long a request waits for the child to say what it draws


class Count:
    """Sample-steps (rows x steps) done of a model being drawn: seen by any request waiting for the same samples."""

    def __init__(self):
        self.done = 0
        self._lock = threading.Lock()

    def add(self, k: int) -> None:
        with self._lock:
            self.done += k


_EARLY: dict[tuple, tuple[Future, Count]] = {}  # cache key -> the entry being drawn, its sample-steps done
_KNOWN = threading.Event()  # clear while a child started has not yet said what it draws
_KNOWN.set()


def start(family: str = DEFAULT_FAMILY, n: int | None = None, reference_n: int = DIVERSITY_N,
          threads: int = 1) -> subprocess.Popen | None:
    """Start the child drawing ``family``'s full teacher: ``n`` rows (default: Compare's default number of
    samples), then up to ``reference_n`` when that is more, each torch thread count ``threads``. Returns at
    once (the process, or None when it cannot start; the app's warm-up then draws everything itself)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "app.early", family, str(n or 0), str(int(reference_n)), str(int(threads))]
    _KNOWN.clear()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env)
    except OSError:
        _KNOWN.set()
        return None
    threading.Thread(target=_read, args=(proc,), daemon=True, name="early-draw").start()
    return proc


def _read(proc: subprocess.Popen) -> None:
    """The parent's side: registers the child's entries, counts their steps, sets them as they arrive."""
    drawn: list[tuple[Future, Count]] = []
    try:
        for line in iter(proc.stdout.readline, b""):
            word, _, rest = line.decode().strip().partition(" ")
            if word == "keys":
                keys = [tuple(k) for k in json.loads(rest)]
                drawn = [(Future(), Count()) for _ in keys]
                _EARLY.update(zip(keys, drawn))
                _KNOWN.set()
            elif word == "done":
                i, k = map(int, rest.split())
                drawn[i][1].add(k)
            elif word == "entry":
                i, size = map(int, rest.split())
                data = proc.stdout.read(size)
                import torch

                drawn[i][0].set_result(torch.load(io.BytesIO(data), weights_only=True))
            else:  # "error": the warm-up draws it itself
                break
    finally:
        for fut, _ in drawn:
            if not fut.done():
                fut.set_exception(RuntimeError("the early draw stopped"))
        _KNOWN.set()
        proc.stdout.close()
        proc.stdin.close()  # the child stops if it has not
        proc.wait()


def keys(timeout: float = KEYS_TIMEOUT_S) -> list[tuple]:
    """The cache keys of the entries drawn (or being drawn) and not yet taken, once the child has said them."""
    _KNOWN.wait(timeout)
    return list(_EARLY)


def take(key: tuple) -> dict | None:
    """The entry drawn under ``key`` (waiting for it while it is drawn), once; else None."""
    _KNOWN.wait(KEYS_TIMEOUT_S)
    fut, _ = _EARLY.pop(key, (None, None))
    if fut is None:
        return None
    try:
        return fut.result()
    except Exception:
        return None


def count(key: tuple) -> Count | None:
    """The sample-steps done so far of the entry drawn under ``key``, while it is drawn (for progress)."""
    _KNOWN.wait(KEYS_TIMEOUT_S)
    return _EARLY.get(key, (None, None))[1]


# The child ---------------------------------------------------------------------------------------

class _Sent:
    """A :class:`Count` of the child: each step is told to the parent."""

    def __init__(self, send, i: int):
        self.send, self.i = send, i

    def add(self, k: int) -> None:
        self.send(f"done {self.i} {k}")


def _child(family: str, n: int, reference_n: int, threads: int) -> None:
    out = os.fdopen(os.dup(1), "wb")  # the messages; anything printed goes to the standard error
    os.dup2(2, 1)
    lock = threading.Lock()

    def send(line: str, data: bytes = b"") -> None:
        with lock:
            out.write(line.encode() + b"\n" + data)
            out.flush()

    def parent_gone():
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=parent_gone, daemon=True).start()
    try:
        import torch

        torch.set_num_threads(max(1, threads))
        from app import rows
        from pdmd_lab import zoo
        from pdmd_lab.families import get_family

        fam = get_family(family)
        if f"{family}/teacher" not in zoo.list_models():
            raise ValueError(f"no shipped teacher for {family!r}")
        teacher = zoo.load(f"{family}/teacher", steps=fam.comparison_teacher_steps)
        if getattr(teacher, "sampler", "euler") != "euler":
            raise ValueError("not an Euler sampler: its rows are not drawn one by one")
        n = n or rows.sample_limits(family)[1]
        parts = [(0, n)] + ([(n, reference_n)] if reference_n > n else [])
        send("keys " + json.dumps([rows.cache_key(family, "teacher", "all", 0, b, teacher.cfg) for _, b in parts]))
        total = parts[-1][1]
        labels, z = rows.labels_all(total, teacher.num_classes), rows.noise(0, total, teacher.shape)
        head = None
        for i, (a, b) in enumerate(parts):
            if a:
                try:
                    os.nice(BACKGROUND_NICE)  # this thread (Linux: threads one by one) and the threads it starts below
                except (AttributeError, OSError):  # a system without it: the rows are drawn at the same priority
                    pass
                send(f"done {i} {a * int(teacher.num_steps)}")  # the rows drawn already, for the page's progress
            with torch.no_grad():
                x, ms = rows.split_sample(teacher, labels[a:b], z[a:b], 0, _Sent(send, i))
            if head is not None:
                x, ms = torch.cat([head["x"], x]), head["ms"] + ms
            head = {"x": x, "ms": ms, "nfe": teacher.nfe, "labels": labels[:b]}
            buf = io.BytesIO()
            torch.save(head, buf)
            send(f"entry {i} {buf.getbuffer().nbytes}", buf.getvalue())
    except Exception as e:  # the app's warm-up draws it itself (and the page says what fails)
        send("error " + " ".join(str(e).split()))


if __name__ == "__main__":
    _family, _n, _reference_n, _threads = sys.argv[1:5]
    _child(_family, int(_n), int(_reference_n), int(_threads))

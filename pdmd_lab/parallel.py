"""Independent distillations side by side, one process each, as ``pdmd-lab study --jobs`` runs its rows.

:func:`distill_all` takes named :class:`~pdmd_lab.distill.DistillConfig` s, runs each through
:func:`pdmd_lab.distill.distill` in its own single-threaded worker (``spawn`` start method by default, like
the study; ``fork`` where the caller has torch loaded already), and returns the finished students with
their wall times. The runs are independent and every draw is seeded by its config, so the students
equal the ones a sequential loop returns (the tests check it); only the wall time changes: the longest
run's when there are cores for all, instead of the sum. Single-threaded workers also keep their share
of a machine that other jobs are using (one process with two threads on two busy cores waits on its
slower thread).

:func:`start_all` starts the same workers and returns at once: the caller (a notebook) works on
while they train, and ``runs.result()`` waits for the students.

Starting nets of oracle teachers come from the shipped ``assets/init`` or the disk cache
(:func:`pdmd_lab.distill.trainer.oracle_init_net`); a run whose starting net is missing fits it in its
own worker.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import torch


def _run(config, threads: int):
    from pdmd_lab.distill import distill

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    student = distill(config, progress=False)
    return student, time.perf_counter() - t0


START_METHODS = ("spawn", "fork", "forkserver")


def distill_all(configs: dict, *, processes: int | None = None, threads: int = 1, start_method: str = "spawn") -> dict:
    """``{name: (student, seconds)}`` for ``{name: DistillConfig}``, in the order given.

    ``processes`` (default: one per run) workers run at once; ``processes = 1`` runs them here, one
    after the other, with this process's thread count. ``threads`` is each worker's torch thread count.
    ``start_method``: how workers start (:data:`START_METHODS`). ``spawn`` (the default) starts a fresh
    interpreter, which imports torch and the kit again (about 3 CPU-seconds a worker); ``fork`` (POSIX only)
    copies this process, imports included, and suits a caller such as a notebook kernel that has run torch
    on one thread only (a fork after multi-threaded torch work can hang in the child).
    """
    return start_all(configs, processes=processes, threads=threads, start_method=start_method).result()


class Runs:
    """Distillations started by :func:`start_all`; :meth:`result` waits for them."""

    def __init__(self, futures: dict, executor=None):
        self._futures, self._executor = futures, executor

    def done(self) -> bool:
        """True when every run has finished (or failed)."""
        return all(f.done() for f in self._futures.values())

    def result(self) -> dict:
        """``{name: (student, seconds)}`` in the order given, once all have finished; a failed run raises
        its error here (after the others have finished)."""
        try:
            return {name: fut.result() for name, fut in self._futures.items()}
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def start_all(configs: dict, *, processes: int | None = None, threads: int = 1, start_method: str = "spawn") -> Runs:
    """Start :func:`distill_all`'s runs and return at once, while the workers train.

    Bad options raise here, before any worker starts. ``processes = 1`` has no workers: the runs train
    here, one after the other, before this returns.
    """
    if not configs:
        raise ValueError("configs is empty: give at least one DistillConfig")
    processes = len(configs) if processes is None else int(processes)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import multiprocessing as mp

    if start_method not in START_METHODS or start_method not in mp.get_all_start_methods():
        allowed = [m for m in START_METHODS if m in mp.get_all_start_methods()]
        raise ValueError(f"start_method must be one of {', '.join(allowed)} here, got {start_method!r}")
    for name, config in configs.items():
        config.build_method()  # a bad option fails here, before any worker starts
    if processes == 1:
        futures = {}
        for name, config in configs.items():
            futures[name] = Future()
            futures[name].set_result(_run(config, torch.get_num_threads()))
        return Runs(futures)
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(min(processes, len(configs)), mp_context=mp.get_context(start_method))
    return Runs({name: ex.submit(_run, config, threads) for name, config in configs.items()}, ex)

"""Independent distillations side by side, one process each, as ``pdmd-lab study --jobs`` runs its rows.

:func:`distill_all` takes named :class:`~pdmd_lab.distill.DistillConfig` s, runs each through
:func:`pdmd_lab.distill.distill` in its own single-threaded worker (``spawn`` start method, like the
study), and returns the finished students with their wall times. The runs are independent and every
draw is seeded by its config, so the students equal the ones a sequential loop returns (the tests
check it); only the wall time changes: the longest run's when there are cores for all, instead of
the sum. Single-threaded workers also keep their share of a machine that other jobs are using (one
process with two threads on two busy cores waits on its slower thread).

Starting nets of oracle teachers come from the shipped ``assets/init`` or the disk cache
(:func:`pdmd_lab.distill.trainer.oracle_init_net`); a run whose starting net is missing fits it in its
own worker.
"""

from __future__ import annotations

import time

import torch


def _run(config, threads: int):
    from pdmd_lab.distill import distill

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    student = distill(config, progress=False)
    return student, time.perf_counter() - t0


def distill_all(configs: dict, *, processes: int | None = None, threads: int = 1) -> dict:
    """``{name: (student, seconds)}`` for ``{name: DistillConfig}``, in the order given.

    ``processes`` (default: one per run) workers run at once; ``processes = 1`` runs them here, one
    after the other, with this process's thread count. ``threads`` is each worker's torch thread count.
    """
    if not configs:
        raise ValueError("configs is empty: give at least one DistillConfig")
    processes = len(configs) if processes is None else int(processes)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for name, config in configs.items():
        config.build_method()  # a bad option fails here, before any worker starts
    if processes == 1:
        return {name: _run(config, torch.get_num_threads()) for name, config in configs.items()}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(processes, len(configs)), mp_context=mp.get_context("spawn")) as ex:
        futures = {name: ex.submit(_run, config, threads) for name, config in configs.items()}
        return {name: fut.result() for name, fut in futures.items()}

"""Where prepare's tasks run: this process, a local process pool, or a Dask cluster.

A runner takes a task function and a list of tasks and returns their results in task order; what a
task produces never depends on where or in which order it ran (ssl_core/data/decode_task.py), so 1
worker, N workers and a Dask cluster write the same bytes. The pool and the cluster are existing
engines (concurrent.futures, dask.distributed): no scheduling of our own beyond handing them the list.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Sequence

from ssl_pipeline.errors import StageError

Done = Callable[[int], None]   # called with the number of finished tasks


def worker_count(setting: int) -> int:
    """prepare.workers: 0 = every core this process may use."""
    if setting > 0:
        return setting
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


class Runner:
    def __init__(self, submit_all: Callable, where: str):
        self._submit_all, self.where = submit_all, where

    def __call__(self, fn: Callable, tasks: Sequence, done: Done | None = None) -> list:
        return self._submit_all(fn, list(tasks), done or (lambda n: None))


def _in_process(fn: Callable, tasks: list, done: Done) -> list:
    results = []
    for task in tasks:
        results.append(fn(task))
        done(len(results))
    return results


def _pool_runner(pool: ProcessPoolExecutor) -> Callable:
    def submit_all(fn: Callable, tasks: list, done: Done) -> list:
        futures = [pool.submit(fn, task) for task in tasks]
        for finished, future in enumerate(futures, start=1):   # results in task order
            future.result()
            done(finished)
        return [f.result() for f in futures]
    return submit_all


def _dask_runner(client) -> Callable:
    def submit_all(fn: Callable, tasks: list, done: Done) -> list:
        # pure=False: identical tasks of two prepares are still run (their shard files may be gone)
        futures = client.map(fn, tasks, pure=False)
        for finished, future in enumerate(futures, start=1):   # results in task order
            future.result()
            done(finished)
        return client.gather(futures)
    return submit_all


@contextlib.contextmanager
def runner(workers: int, dask_address: str = "") -> Iterator[Runner]:
    """A Runner for prepare.workers / prepare.dask_address."""
    if dask_address:
        try:
            from distributed import Client
        except ImportError:
            raise StageError("prepare.dask_address is set but dask.distributed is not installed "
                             "(pip install 'distributed')") from None
        try:
            client = Client(dask_address, timeout="30s", set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise StageError(f"prepare.dask_address: no Dask scheduler answered at {dask_address} ({err}); "
                             "start one (dask scheduler) or set prepare.dask_address to \"\"") from None
        try:
            yield Runner(_dask_runner(client), f"Dask cluster at {dask_address}")
        finally:
            client.close()
        return
    n = worker_count(workers)
    if n == 1:
        yield Runner(_in_process, "1 process")
        return
    # forkserver: workers start from a clean interpreter (no inherited threads or torch state) once,
    # then every task reuses them
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield Runner(_pool_runner(pool), f"{n} processes")

"""Run independent tasks here (threads or processes) or on a Ray cluster, results in input order.

Sweeps and backtests are pure functions of their jobs; they hand them to an `Executor` and get the
same list back wherever the jobs ran. `--ray ADDRESS` picks a `RayExecutor` (`local` starts a Ray
instance on this machine); without it a `LocalExecutor` runs them as before. Ray is imported only
when a `RayExecutor` is made, and is the optional extra `moetrace[ray]`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from moetrace.errors import MoetraceError

T = TypeVar("T")
R = TypeVar("R")

#: progress(tasks_done, tasks_total, where they run): the library's progress callback convention
TaskProgress = Callable[[int, int, str], None]

RAY_MISSING = "--ray needs Ray: install the ray extra: pip install 'moetrace[ray]'"
START_HINT = "start one with `ray start --head` and pass the address it prints, or use --ray local"


class Executor:
    """Maps a function over items; `map` returns the results in the items' order."""

    workers: int = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T], progress: TaskProgress | None = None) -> list[R]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.workers} workers"

    def close(self) -> None:
        """Release what this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Threads (for work that releases the GIL, such as compiled replays) or spawned processes."""

    def __init__(self, workers: int | None = None, processes: bool = False) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.processes = processes

    def map(self, fn: Callable[[T], R], items: Iterable[T], progress: TaskProgress | None = None) -> list[R]:
        items = list(items)
        results: list[R] = []
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                results.append(fn(item))
                if progress is not None:
                    progress(len(results), len(items), self.describe())
            return results
        pool: ProcessPoolExecutor | ThreadPoolExecutor
        if self.processes:
            pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        else:
            pool = ThreadPoolExecutor(max_workers=self.workers)
        # one BLAS thread per worker process: each would otherwise start one per core (oversubscribed)
        with pool, _one_blas_thread() if self.processes else contextlib.nullcontext():
            for result in pool.map(fn, items, chunksize=max(1, len(items) // (4 * self.workers))):
                results.append(result)
                if progress is not None:
                    progress(len(results), len(items), self.describe())
        return results

    def describe(self) -> str:
        return f"{self.workers} local {'processes' if self.processes else 'threads'}"


_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Children started inside inherit one BLAS thread each (unless the user set their own)."""
    saved = {name: os.environ.get(name) for name in _BLAS_THREADS}
    for name in _BLAS_THREADS:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RayExecutor(Executor):
    """One Ray task per item on the cluster at `address` (`local`: a new instance on this machine).

    The function is put in Ray's object store once (it may carry large arrays in its closure) and
    every task receives it from there. A task's exception is raised here as the same exception.
    """

    def __init__(self, address: str = "local", cpus: int | None = None) -> None:
        ray = _import_ray()
        self.address = address
        self.started = not ray.is_initialized()
        if self.started:  # else: reuse the instance this process already joined (a test's, a notebook's)
            quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
            if address == "local":
                ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, **quiet)
            else:
                _check_reachable(address)
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as error:
                    raise MoetraceError(f"cannot join a Ray cluster at {address} ({error}); {START_HINT}") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._call = ray.remote(_call)

    def map(self, fn: Callable[[T], R], items: Iterable[T], progress: TaskProgress | None = None) -> list[R]:
        ray = _import_ray()
        function = ray.put(fn)
        refs = [self._call.remote(function, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending, done = refs, 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            for ref in ready:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayError as error:
                    for other in pending:
                        ray.cancel(other)
                    raise _local_error(error) from error
            done += len(ready)
            if progress is not None and ready:
                progress(done, len(refs), self.describe())
        return results

    def describe(self) -> str:
        where = "a local Ray instance" if self.address == "local" else f"the Ray cluster at {self.address}"
        return f"{where} ({self.workers} CPUs)"

    def close(self) -> None:
        if self.started:
            _import_ray().shutdown()
            self.started = False


def executor_for(ray: str | None, workers: int | None = None, *, processes: bool = False) -> Executor | None:
    """A `RayExecutor` for a Ray address (or `local`); else a `LocalExecutor` of `workers`; else None,
    which a library call takes as its own local default.

    `workers` also sets the CPUs of a `local` Ray instance (a cluster has its own).
    """
    if ray:
        return RayExecutor(ray, cpus=workers)
    return LocalExecutor(workers, processes=processes) if workers else None


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MoetraceError(RAY_MISSING) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds on a host:port nobody answers at (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto` and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise MoetraceError(
            f"cannot reach a Ray cluster at {address} ({error.strerror or error}); {START_HINT}"
        ) from None


def _local_error(error: Exception) -> BaseException:
    """The exception a task raised, as the local run would have raised it; Ray's own failures as one line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return MoetraceError(f"a Ray task failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}")

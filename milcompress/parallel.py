"""Where work runs: the executor that `passes/` hands independent per-weight jobs to.

A pass builds one job per weight (a small picklable object: the weight, or a reference to it with
a `load()` method, and the configs), hands the jobs to an executor's `map` with a module-level
function of `ops/` (see `ops/jobs.py`), and receives the results in the jobs' order, one at a
time, as they are ready. Three executors:
- `InProcess`: runs each job here, in order (one worker);
- `ProcessPool`: a pool of local processes (spawned: they import numpy and `milcompress.ops`,
  never coremltools), at most `in_flight` jobs submitted and not yet taken back, so memory holds
  a bounded number of inputs and results whatever the number of weights;
- `DaskExecutor`: the same on a `dask.distributed` cluster (a `Client`, or a scheduler address).
  Each job is scattered to a worker and run there; a job whose weight is a reference to storage
  the workers share travels as the reference alone. Nothing else in milcompress imports Dask.

The jobs are pure functions of their inputs and the results are taken in order, so what a pass
writes, reports and tells its progress is the same whichever executor ran its jobs and with how
many workers (tested byte for byte on saved packages). `executor_for(workers, client, work)`
chooses: a client sends the jobs to its cluster; `workers=1` runs them here; `workers=N` in a
pool of N processes; `workers=None` (the default) in a pool sized to the machine's cores where
the work is big enough to repay starting it (`POOL_MIN_ELEMENTS`), else here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import types
from abc import ABC, abstractmethod
from typing import Callable, Deque, Dict, Iterable, Iterator, Optional, TypeVar

from milcompress.errors import ConfigError, PassError

logger = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")

POOL_MIN_ELEMENTS = 1 << 24
"""With `workers=None`, jobs over fewer weight elements than this (16.8M: 32 MB of float16) run in
this process. Starting a pool of processes costs about half a second of each worker's time, and
one form of a weight costs 30-200 ns an element here (int8 per channel 36, int4 per block 45,
4-bit palettes per tensor 54, in groups of 16 190), so a pool pays off from about this size; a
pass that computes several forms per weight (the size allocation's evaluation) counts each
(`work` in `executor_for`)."""
CONNECT_TIMEOUT = "10s"  # how long a scheduler address is tried before it is an error
IN_FLIGHT_PER_WORKER = 2
"""Jobs submitted and not yet taken back, per worker: enough to keep every worker busy while the
caller takes a result, few enough that memory holds only a handful of weights and their forms."""


worker_state: Dict[str, object] = {}
"""What jobs keep from one to the next in the process that runs them, by a key of their own (the
size allocation's sensitivity jobs keep the dense runs they compare against: see
`passes/sensitivity.py`). Cleared when the executor closes: a pool's processes end with it, and a
Dask cluster's workers, which outlive it, are told to clear theirs."""


def _clear_worker_state() -> None:
    worker_state.clear()


def machine_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_workers(workers, field: str = "workers") -> Optional[int]:
    """`workers` as an int >= 1, or None (the default); a ConfigError naming `field` otherwise."""
    if workers is None:
        return None
    given = workers
    if isinstance(workers, str):
        try:
            workers = int(workers.strip())
        except ValueError:
            workers = None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{field} must be a whole number of at least 1, not {given!r}", field=field)
    return workers


class Executor(ABC):
    """Runs `function(job)` for independent jobs; `map` yields the results in the jobs' order.

    `function` must be a module-level function (workers import it by name) and each job
    picklable. Use as a context manager: leaving it stops the workers it started."""

    workers: int = 1

    @abstractmethod
    def map(self, function: Callable[[Job], Result], jobs: Iterable[Job]) -> Iterator[Result]:
        ...

    def close(self, abort: bool = False) -> None:
        """Stop what this executor started (nothing, for the base class); `abort`: without
        waiting, the jobs not started dropped (an error or an interrupt ends the pass)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(abort=kind is not None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


class InProcess(Executor):
    """Each job in this process, in order."""

    workers = 1

    def map(self, function, jobs):
        for job in jobs:
            yield function(job)

    def close(self, abort: bool = False) -> None:
        _clear_worker_state()


@contextlib.contextmanager
def _caller_script_hidden():
    """While worker processes start: the caller's script, if it is one run by path, hidden from
    them. A spawned process imports its parent's main module (running a script without an
    `if __name__ == "__main__":` guard all over again in every worker); the jobs are functions
    of milcompress and need nothing from it, so the workers start from an empty one."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield  # an interactive session, a notebook, `python -m`: nothing is imported again
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them; they print no tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Bounded(Executor):
    """`map` over a `submit(function, job) -> future` with at most `in_flight` futures pending."""

    def __init__(self, in_flight: int):
        self.in_flight = max(1, in_flight)

    @abstractmethod
    def _submit(self, function, job):
        """Start `function(job)`; its future."""

    @staticmethod
    def _result(future):
        return future.result()

    def map(self, function, jobs):
        pending: Deque = collections.deque()
        try:
            for job in jobs:
                if len(pending) >= self.in_flight:
                    yield self._result(pending.popleft())
                pending.append(self._submit(function, job))
            while pending:
                yield self._result(pending.popleft())
        finally:
            for future in pending:  # the caller stopped early (an error, an interrupt)
                future.cancel()


class ProcessPool(_Bounded):
    """A pool of `workers` spawned processes (default: one per core), started at the first `map`."""

    def __init__(self, workers: Optional[int] = None, in_flight: Optional[int] = None):
        self.workers = check_workers(workers) or machine_workers()
        super().__init__(in_flight or IN_FLIGHT_PER_WORKER * self.workers)
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self._workers: set = set()  # every worker process the pool started

    @staticmethod
    def _result(future):
        try:
            return future.result()
        except concurrent.futures.process.BrokenProcessPool as error:
            raise PassError(
                f"a worker process stopped abruptly (out of memory, or killed): {error}; workers=1 runs the work in this process"
            ) from error

    def _submit(self, function, job):
        if self._pool is None:
            logger.debug("starting %d worker processes", self.workers)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
            )
        before = set(multiprocessing.active_children())
        with _caller_script_hidden():  # workers start within submit, as they are needed
            future = self._pool.submit(function, job)
        self._workers.update(set(multiprocessing.active_children()) - before)  # to stop them on abort
        return future

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        # After Ctrl-C or an error, the jobs not started are dropped and the workers are stopped
        # (their work is being abandoned): a worker still starting would otherwise find the pool's
        # queues gone with the parent and print a traceback, and one still computing could write
        # into the scratch space the caller is about to remove.
        workers, self._workers = (list(self._workers) if abort else []), set()
        pool.shutdown(wait=not abort, cancel_futures=True)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=5)


class DaskExecutor(_Bounded):
    """The jobs on a `dask.distributed` cluster: `client` is a `distributed.Client` or the address
    of a scheduler (`tcp://host:8786`; a client is then opened, and closed with the executor).
    `workers` is the cluster's number of worker threads when the executor is made."""

    def __init__(self, client, in_flight: Optional[int] = None):
        try:
            import distributed
        except ImportError as error:
            raise ConfigError("a Dask scheduler needs the 'distributed' package (pip install 'milcompress[dask]')", field="client") from error
        self._owned = None
        if isinstance(client, (str, os.PathLike)):
            address = os.fspath(client)
            try:
                client = self._owned = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as error:
                raise ConfigError(f"cannot reach the Dask scheduler at {address}: {error}", field="scheduler") from error
        elif not isinstance(client, distributed.Client):
            raise ConfigError(f"client must be a dask.distributed Client or a scheduler address, not {type(client).__name__}", field="client")
        self.client = client
        threads = sum(client.nthreads().values())
        if threads < 1:
            raise ConfigError(f"the Dask cluster at {client.scheduler.address} has no workers", field="client")
        self.workers = threads
        super().__init__(in_flight or IN_FLIGHT_PER_WORKER * threads)

    def _submit(self, function, job):
        # Scattered first: the job goes to a worker directly, not through the scheduler's graph.
        (data,) = self.client.scatter([job], hash=False)
        return self.client.submit(function, data, pure=False)

    def close(self, abort: bool = False) -> None:
        with contextlib.suppress(Exception):  # a cluster gone away keeps nothing to clear
            self.client.run(_clear_worker_state)
        if self._owned is not None:
            self._owned.close()
            self._owned = None


@contextlib.contextmanager
def dask_client(address: Optional[str]):
    """A `dask.distributed` Client of the scheduler at `address` for the time of a `with` block
    (None: yields None); a ConfigError naming the scheduler where it cannot be reached."""
    if address is None:
        yield None
        return
    executor = DaskExecutor(address)
    try:
        yield executor.client
    finally:
        executor.close()


def executor_for(workers=None, client=None, work: Optional[int] = None, jobs: Optional[int] = None) -> Executor:
    """The executor for a pass's jobs: on `client`'s cluster when given (a `distributed.Client` or
    a scheduler address); else `workers` local processes (1: in this process). With neither,
    a pool with one process per core where `work` (the weight elements the jobs go through,
    once per form they compute, when known) is at least `POOL_MIN_ELEMENTS`, else this process.
    `jobs`: how many there are (one job runs here)."""
    workers = check_workers(workers)
    if client is not None:
        return DaskExecutor(client)
    if workers is None:
        workers = machine_workers() if work is None or work >= POOL_MIN_ELEMENTS else 1
    if workers == 1 or (jobs is not None and jobs < 2):
        return InProcess()
    return ProcessPool(workers)

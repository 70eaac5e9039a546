"""Where the units of a campaign run: in this process, in local worker processes, or on a
Dask cluster. One interface serves ``tdpfast fuzz`` campaigns (a unit is a block of
explorer seeds), ``tdpfast sweep`` (a unit is a grid point) and any other command whose
work splits into independent units.

A :class:`Unit` is a picklable call ``fn(*args)`` of a module-level function under a key
unique within its campaign. The driver submits units, takes results as they finish
(:meth:`Scheduler.wait`, or :func:`drive` for the usual loop), cancels the units it no
longer needs, and closes the scheduler. A unit whose worker dies is run again on another
worker: the process pool is rebuilt and its lost units resubmitted; a Dask scheduler
reschedules the tasks of a lost worker by itself.

Specs (``--jobs N`` and ``--scheduler``)::

    inprocess          every unit in this process, one after the other (the default)
    processes:N        N local worker processes (``--jobs N``; the standard library only)
    local:N            a Dask LocalCluster of N single-threaded worker processes on 127.0.0.1
    tcp://HOST:PORT    a running Dask scheduler (``dask scheduler`` + ``dask worker``)

Dask is an optional extra (``pip install "tdpfast[dask]"``); the workers of a remote
cluster must import the same tdpfast build (checked with :func:`engine_version`).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .errors import InvalidArgumentError, TdpError

MAX_ATTEMPTS = 3          # runs of one unit (its worker died every time) before giving up
_SPEC = re.compile(r"^(inprocess|processes:(\d+)|local:(\d+)|(tcp|tls)://[^\s/]+:\d+)$")


class WorkerLostError(TdpError, RuntimeError):
    """A unit lost its worker every time it ran (``MAX_ATTEMPTS`` times)."""


@dataclass
class Unit:
    """One independent piece of work: ``fn(*args)``, a module-level function."""

    key: str
    fn: Callable
    args: Tuple = ()
    attempts: int = field(default=0, compare=False)


@functools.lru_cache(maxsize=None)
def engine_version() -> str:
    """The package version and a digest of the compiled core: results computed by
    another build are not comparable (sweep caches key on it, clusters must agree)."""
    from . import __version__, _native  # noqa: F401 - loads the compiled core

    with open(sys.modules["tdpfast._tdpfast"].__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"{__version__}+{digest}"


def current_worker() -> str:
    """The name of the worker running the calling unit: a Dask worker's address, or
    host:pid for a local process (this process, or one of a process pool)."""
    if "distributed" in sys.modules:      # only a Dask worker has imported it already
        try:
            from distributed import get_worker
            return get_worker().address
        except ValueError:                # not inside a Dask task
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_spec(jobs: Optional[int] = None, scheduler: Optional[str] = None) -> str:
    """The scheduler spec of ``--jobs N`` / ``--scheduler S`` (validated, never started)."""
    if jobs is not None and scheduler is not None:
        raise InvalidArgumentError("give --jobs N or --scheduler, not both")
    if jobs is not None:
        if not 1 <= jobs <= 1024:
            raise InvalidArgumentError(f"--jobs must be 1..1024, got {jobs}")
        return "inprocess" if jobs == 1 else f"processes:{jobs}"
    if scheduler is None:
        return "inprocess"
    m = _SPEC.match(scheduler.strip())
    if not m:
        raise InvalidArgumentError(f"--scheduler takes local:N or tcp://HOST:PORT, got {scheduler!r}")
    n = m.group(2) or m.group(3)
    if n is not None and not 1 <= int(n) <= 1024:
        raise InvalidArgumentError(f"the number of workers must be 1..1024, got {n}")
    if (m.group(3) is not None or m.group(4) is not None) and not _dask_available():
        raise InvalidArgumentError(_NO_DASK)
    return scheduler.strip()


_NO_DASK = 'a Dask scheduler needs the dask extra: pip install "tdpfast[dask]"'


def _dask_available() -> bool:
    try:
        import distributed  # noqa: F401
        return True
    except ImportError:
        return False


def open_scheduler(spec: str) -> "Scheduler":
    """Start (or connect to) the scheduler named by a spec from :func:`parse_spec`."""
    spec = parse_spec(scheduler=spec)
    if spec == "inprocess":
        return InProcessScheduler()
    kind, _, arg = spec.partition(":")
    if kind == "processes":
        return ProcessScheduler(int(arg))
    if kind == "local":
        return DaskScheduler(n_workers=int(arg))
    return DaskScheduler(address=spec)


class Scheduler:
    """Submit units, take their results as they finish, cancel, close."""

    name = "?"

    def __init__(self) -> None:
        self.retried = 0          # units run again because their worker died

    @property
    def slots(self) -> int:
        """Units that can run at the same time (worker threads)."""
        raise NotImplementedError

    def submit(self, unit: Unit) -> None:
        raise NotImplementedError

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Unit, Any]]:
        """Results of the units that finished (at least one, unless ``timeout`` passed or
        nothing is in flight), as (unit, result). A unit's own exception is raised."""
        raise NotImplementedError

    def in_flight(self) -> List[Unit]:
        raise NotImplementedError

    def cancel(self, keys: Iterable[str]) -> None:
        """Forget these units: their results (if they still come) are dropped."""
        raise NotImplementedError

    def cancel_all(self) -> None:
        self.cancel([u.key for u in self.in_flight()])

    def close(self) -> None:
        pass

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessScheduler(Scheduler):
    """Every unit in this process, in submission order, when its result is asked for."""

    name = "inprocess"

    def __init__(self) -> None:
        super().__init__()
        self._queue: List[Unit] = []

    @property
    def slots(self) -> int:
        return 1

    def submit(self, unit: Unit) -> None:
        self._queue.append(unit)

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Unit, Any]]:
        if not self._queue:
            return []
        u = self._queue.pop(0)
        return [(u, u.fn(*u.args))]

    def in_flight(self) -> List[Unit]:
        return list(self._queue)

    def cancel(self, keys: Iterable[str]) -> None:
        drop = set(keys)
        self._queue = [u for u in self._queue if u.key not in drop]


def _pool_worker_init() -> None:
    # The driver owns Ctrl-C: it cancels the pool's work and prints the partial result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm_up() -> int:
    from . import _native  # noqa: F401 - load the compiled core before the clock starts
    return os.getpid()


class ProcessScheduler(Scheduler):
    """N local worker processes (``concurrent.futures``, spawned: no state shared with
    the driver). When a worker process dies the pool breaks; it is rebuilt and every unit
    that was in flight on it is submitted again."""

    def __init__(self, n: int) -> None:
        super().__init__()
        import multiprocessing

        self.n = n
        self.name = f"processes:{n}"
        self._ctx = multiprocessing.get_context("spawn")
        self._futs: Dict[cf.Future, Unit] = {}
        self._ready: List[Tuple[Unit, Any]] = []      # results saved from a broken pool
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        pool = cf.ProcessPoolExecutor(self.n, mp_context=self._ctx, initializer=_pool_worker_init)
        for f in [pool.submit(_warm_up) for _ in range(self.n)]:   # start the workers now
            f.result()
        return pool

    @property
    def slots(self) -> int:
        return 2 * self.n       # one unit running and one queued per worker process

    def pids(self) -> List[int]:
        """The worker processes' ids (for a test that kills one)."""
        return sorted((self._pool._processes or {}).keys())

    def submit(self, unit: Unit) -> None:
        if unit.attempts >= MAX_ATTEMPTS:
            raise WorkerLostError(f"unit {unit.key} lost its worker {unit.attempts} times")
        unit.attempts += 1
        try:
            self._futs[self._pool.submit(unit.fn, *unit.args)] = unit
        except cf.process.BrokenProcessPool:      # a worker died since the last wait()
            unit.attempts -= 1
            self._rebuild()
            self.submit(unit)

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Unit, Any]]:
        out, self._ready = self._ready, []
        if out or not self._futs:
            return out
        done, _ = cf.wait(list(self._futs), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        broken = False
        for f in done:
            u = self._futs[f]
            if f.cancelled():
                del self._futs[f]
                continue
            exc = f.exception()
            if isinstance(exc, cf.process.BrokenProcessPool):
                broken = True                    # lost: submitted again by _rebuild()
                continue
            del self._futs[f]
            if exc is not None:
                raise exc
            out.append((u, f.result()))
        if broken:
            self._rebuild()
        return out + self._take_ready()

    def _take_ready(self) -> List[Tuple[Unit, Any]]:
        out, self._ready = self._ready, []
        return out

    def _rebuild(self) -> None:
        """A worker died: every future of the pool fails, except those that finished
        before (their results are kept for wait()); start a new pool and submit the
        lost units again."""
        lost = []
        for f, u in list(self._futs.items()):
            if f.done() and not f.cancelled() and f.exception() is None:
                self._ready.append((u, f.result()))
            else:
                lost.append(u)
        self._futs.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        for u in lost:
            self.retried += 1
            self.submit(u)

    def in_flight(self) -> List[Unit]:
        return list(self._futs.values()) + [u for u, _ in self._ready]

    def cancel(self, keys: Iterable[str]) -> None:
        drop = set(keys)
        self._ready = [(u, r) for u, r in self._ready if u.key not in drop]
        for f, u in list(self._futs.items()):
            if u.key in drop:
                f.cancel()                       # a running unit finishes; its result is dropped
                del self._futs[f]

    def close(self) -> None:
        self._futs.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskScheduler(Scheduler):
    """A Dask cluster: a LocalCluster started here (``local:N``) or a running scheduler
    (``tcp://HOST:PORT``). Dask reschedules the tasks of a worker that dies (up to its
    ``distributed.scheduler.allowed-failures``); a worker's Nanny restarts it."""

    def __init__(self, address: Optional[str] = None, n_workers: Optional[int] = None,
                 connect_timeout: float = 20.0) -> None:
        super().__init__()
        try:
            import distributed
        except ImportError:
            raise InvalidArgumentError(_NO_DASK) from None
        self._dd = distributed
        self._cluster = None
        self._futs: Dict[Any, Unit] = {}
        self._placed: Dict[str, str] = {}       # task key -> the worker last seen running it
        self._token = itertools.count()
        try:
            if address is None:
                # The workers inherit an ignored SIGINT: a terminal's Ctrl-C reaches the driver,
                # which cancels their work and closes the cluster (they do not die mid-unit).
                with _sigint_ignored():
                    self._cluster = distributed.LocalCluster(
                        n_workers=n_workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
                self._client = distributed.Client(self._cluster, set_as_default=False)
                self.name = f"local:{n_workers}"
            else:
                self._client = distributed.Client(address, timeout=connect_timeout, set_as_default=False)
                self.name = address
            self._client.wait_for_workers(1, timeout=connect_timeout)
        except (OSError, TimeoutError) as e:
            self.close()
            raise InvalidArgumentError(f"cannot reach a Dask scheduler with workers at "
                                       f"{address or 'a new LocalCluster'}: {e}") from None
        self._check_versions()

    def _check_versions(self) -> None:
        mine = engine_version()
        try:
            theirs = self._client.run(engine_version)
        except Exception as e:  # noqa: BLE001 - a worker without tdpfast fails to unpickle
            self.close()
            raise InvalidArgumentError(f"the Dask workers cannot run tdpfast ({type(e).__name__}: {e}); "
                                       "install this build on every worker") from None
        try:   # the scheduler unpickles the task graph too (distributed's update_graph)
            theirs["scheduler"] = self._client.run_on_scheduler(engine_version)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise InvalidArgumentError(f"the Dask scheduler cannot import tdpfast ({type(e).__name__}: {e}); "
                                       "install this build where the scheduler runs too") from None
        bad = {w: v for w, v in theirs.items() if v != mine}
        if bad:
            self.close()
            raise InvalidArgumentError(f"Dask workers run another tdpfast build ({bad}); this one is {mine}")

    @property
    def client(self):
        return self._client

    @property
    def slots(self) -> int:
        info = self._client.scheduler_info(n_workers=-1) if _takes_n_workers(self._client) \
            else self._client.scheduler_info()
        # Two units per worker thread: one running, one queued behind it, so a worker never
        # idles for the round trip between finishing a unit and being handed the next.
        return 2 * max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def submit(self, unit: Unit) -> None:
        unit.attempts += 1
        key = f"tdpfast-{unit.key}-{next(self._token)}-{os.getpid()}"
        self._futs[self._client.submit(unit.fn, *unit.args, key=key, pure=False)] = unit

    def _watch_workers(self) -> None:
        """Count the units that a lost worker was running: they run again elsewhere."""
        now = self._client.processing()                  # worker -> keys it is running
        gone = {w for w in self._placed.values() if w not in now}
        ours = {f.key for f in self._futs}
        self.retried += sum(1 for k, w in self._placed.items() if w in gone and k in ours)
        self._placed = {k: w for w, keys in now.items() for k in keys if k in ours}

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Unit, Any]]:
        if not self._futs:
            return []
        self._watch_workers()
        try:
            with self._client.as_current():           # distributed.wait() asks for "the" client
                done, _ = self._dd.wait(list(self._futs), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        out: List[Tuple[Unit, Any]] = []
        for f in done:
            u = self._futs.pop(f)
            if f.status == "cancelled":
                continue
            out.append((u, f.result()))          # a unit's error (or KilledWorker) is raised here
        return out

    def in_flight(self) -> List[Unit]:
        return list(self._futs.values())

    def cancel(self, keys: Iterable[str]) -> None:
        drop = set(keys)
        gone = [f for f, u in self._futs.items() if u.key in drop]
        for f in gone:
            del self._futs[f]
        if gone:
            self._client.cancel(gone)

    def close(self) -> None:
        client, cluster = getattr(self, "_client", None), self._cluster
        self._futs = {}
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _sigint_ignored():
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:                   # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def drive(sched: Scheduler, next_unit: Callable[[], Optional[Unit]],
          on_result: Callable[[Unit, Any], None], *, tick: Optional[Callable[[], None]] = None,
          tick_s: float = 0.25) -> None:
    """The usual loop: keep every worker slot busy with units from ``next_unit()`` (None:
    no more for now), hand each result to ``on_result`` as it arrives (it may cancel units
    in flight), call ``tick()`` a few times a second. Returns when nothing is in flight and
    ``next_unit()`` gives None. On Ctrl-C the units in flight are cancelled and
    KeyboardInterrupt propagates.

    Ctrl-C only sets a flag that the loop reads between its steps (within ``tick_s``): a
    KeyboardInterrupt raised at an arbitrary point could land inside ``concurrent.futures``
    or Dask while they hold a lock, and the scheduler's close() would then wait forever.
    A second Ctrl-C raises at once."""
    with _sigint_as_request() as asked:
        try:
            while True:
                want = sched.slots - len(sched.in_flight())
                while want > 0 and not asked():
                    u = next_unit()
                    if u is None:
                        break
                    sched.submit(u)
                    want -= 1
                if asked():
                    raise KeyboardInterrupt
                if not sched.in_flight():
                    return
                for unit, res in sched.wait(timeout=tick_s):
                    on_result(unit, res)
                if tick:
                    tick()
        except KeyboardInterrupt:
            sched.cancel_all()
            raise


@contextlib.contextmanager
def _sigint_as_request():
    """Within: the first SIGINT is recorded (the yielded callable turns True), the second
    raises KeyboardInterrupt. Outside the main thread signals are left alone."""
    hits: List[int] = []

    def on_sigint(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:                   # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, old)


class ProgressLine:
    """One line on stderr, rewritten in place: what all workers did so far."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        print(f"\r  {text}\x1b[K", end="", file=self.stream, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=self.stream, flush=True)

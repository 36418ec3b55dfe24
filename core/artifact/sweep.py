"""Resumable sweeps: config hashing, the point store, and local / Ray executors.

Every finished point is written at once to ``<out>/points/<hash>.json`` (atomically), so an
interrupted or repeated run finds it there and recomputes nothing.

Stopping leaves no process behind (see :mod:`core.shutdown`): during :func:`run_sweep`, SIGTERM
and SIGHUP interrupt like Ctrl-C; an interrupted pool terminates its workers mid-point and
waits for them; pool workers die with their parent even when it is SIGKILLed; a Ray instance
the executor started is shut down. Points running when the sweep stops are lost, not stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.data import files_read, reset_files_read
from core.shutdown import die_with_parent, interrupt_on_signals, keep_handlers, start_local_ray

from .spec import PointFn, Row


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(artifact: str, version: str, experiment: str, config: dict[str, Any]) -> str:
    """Stable 16-hex-digit id of one sweep point; equal configs give equal hashes."""
    payload = canonical_json(
        {"artifact": artifact, "version": version, "experiment": experiment, "config": config}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Point:
    """One configuration of one experiment, ready to run."""

    experiment: str
    config: dict[str, Any]
    hash: str
    run: PointFn
    exclusive: bool = False


@dataclass
class PointResult:
    """What computing a point produced: its rows, or the error that stopped it."""

    experiment: str
    config: dict[str, Any]
    hash: str
    rows: list[Row] = field(default_factory=list)
    elapsed_s: float = 0.0
    files_read: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    finished_at: str = ""
    host: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "config": self.config,
            "hash": self.hash,
            "rows": self.rows,
            "elapsed_s": self.elapsed_s,
            "files_read": self.files_read,
            "finished_at": self.finished_at,
            "host": self.host,
        }


class PointStore:
    """Finished points on disk, one JSON file per config hash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, point_hash: str) -> Path:
        return self.directory / f"{point_hash}.json"

    def load(self, point_hash: str) -> PointResult | None:
        """The stored result, or None when absent or unreadable (then it is recomputed)."""
        path = self.path(point_hash)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            print(f"warning: {path}: unreadable stored point ({exc}); recomputing", file=sys.stderr)
            return None
        return PointResult(**{k: data[k] for k in PointResult.__dataclass_fields__ if k in data})

    def save(self, result: PointResult) -> None:
        if result.error is not None:
            raise ValueError("failed points are not stored")
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result.to_json(), indent=1, sort_keys=True, allow_nan=True)
        # write-then-rename: a crash mid-write never leaves a half point behind
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path(result.hash))
        except BaseException:  # an interrupt mid-write leaves no temporary file either
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if this process uses it) torch."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _normalize_rows(out: Any, config: dict[str, Any]) -> list[Row]:
    rows = [out] if isinstance(out, dict) else list(out)
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"a point must return dict rows, got {type(row).__name__}")
        clash = set(row) & set(config)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} repeat config keys")
    return rows


def execute_point(point: Point) -> PointResult:
    """Run one point in this process: seeded, timed, with the data files it read.

    Never raises for an error of the point itself: the error is returned as text, so one failed
    point does not stop the others.
    """
    reset_files_read()
    seed_everything(int(point.config.get("seed", 0)))
    start = time.perf_counter()
    result = PointResult(point.experiment, point.config, point.hash, host=socket.gethostname())
    try:
        result.rows = _normalize_rows(point.run(dict(point.config)), point.config)
    except Exception as exc:  # noqa: BLE001 - reported per point, with its traceback
        tb = traceback.format_exc(limit=-3)
        result.error = f"{type(exc).__name__}: {exc}\n{tb}"
    result.elapsed_s = time.perf_counter() - start
    result.files_read = files_read()
    result.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def _limit_threads(threads: int) -> None:
    # one BLAS/torch thread pool per worker process, sized so workers do not oversubscribe cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _no_op(signum: int, frame: Any) -> None:
    pass


def _init_worker(threads: int, parent_pid: int) -> None:
    """Pool initializer: die with the parent (even SIGKILLed), leave Ctrl-C to the parent (a
    terminal sends SIGINT to the whole process group; the parent terminates its workers). A
    no-op handler, not SIG_IGN, which processes a point starts would inherit."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, _no_op)
    _limit_threads(threads)


def _stop_pool(pool: cf.ProcessPoolExecutor, grace_s: float = 1.0) -> None:
    """Cancel what has not started, SIGTERM the workers (running points are abandoned), wait
    up to ``grace_s`` for them, SIGKILL the rest. Their exit also ends multiprocessing's
    resource tracker, which stays only while a process holding its pipe lives."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # private, stable since 3.2
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.terminate()
        except (OSError, ValueError):  # already gone (or reaped and closed by the pool)
            pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        except (OSError, ValueError):
            pass


class Executor:
    """Runs points and yields their results as they finish."""

    name = "base"

    def map(self, points: Sequence[Point]) -> Iterator[PointResult]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class SerialExecutor(Executor):
    """Runs points one after another in this process (``--jobs 1``; easiest to debug)."""

    name = "serial"

    def map(self, points: Sequence[Point]) -> Iterator[PointResult]:
        for p in points:
            yield execute_point(p)


class LocalPoolExecutor(Executor):
    """Runs points on a pool of ``jobs`` fresh processes on this machine.

    Processes are spawned, not forked: a forked child of a process that already runs torch's
    thread pools can deadlock. When :meth:`map` ends early (an interrupt, the consumer stops)
    or :meth:`close` is called before it finished, the workers are terminated mid-point and
    joined; workers are killed by the kernel if this process dies (Linux; see
    :mod:`core.shutdown`), so start :meth:`map` from the main thread.
    """

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: cf.ProcessPoolExecutor | None = None

    def map(self, points: Sequence[Point]) -> Iterator[PointResult]:
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        pool = self._pool = cf.ProcessPoolExecutor(
            max_workers=min(self.jobs, len(points)) or 1,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        )
        try:
            futures = {pool.submit(execute_point, p): p for p in points}
            for fut in cf.as_completed(futures):
                p = futures[fut]
                try:
                    yield fut.result()
                except Exception as exc:  # noqa: BLE001 - the worker itself died
                    yield PointResult(
                        p.experiment, p.config, p.hash, error=f"worker failed: {exc!r}"
                    )
            pool.shutdown(wait=True)  # every point is done: the workers exit at once
        except BaseException:  # interrupted, or the consumer stopped (GeneratorExit)
            self.close()
            raise
        self._pool = None

    def close(self) -> None:
        """Stop at once: terminate the workers, running points included, and wait for them."""
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop_pool(pool)


class RayExecutor(Executor):
    """Runs points as Ray tasks: on the cluster at ``address``, or on a Ray instance started on
    this machine with ``jobs`` CPUs when no address is given.

    Every node must be able to import ``core`` and the artifact (install this repository on each
    node, e.g. ``pip install -e .`` from a shared checkout). When :meth:`map` ends early, tasks
    not finished are force-cancelled (their worker processes killed). :meth:`close` shuts down a
    Ray instance started here; what is left if this process is SIGKILLed instead is stated in
    :mod:`core.shutdown` (a reaper kills it within ~0.5 s, on Linux).
    """

    name = "ray"

    def __init__(self, jobs: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(
                "--executor ray needs Ray: pip install 'ray>=2.30' (or pip install -e '.[ray]')"
            ) from exc
        self._ray = ray
        self._shutdown: Callable[[], None] | None = None
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
                keep_handlers()  # ray.init replaced SIGTERM's handler
            else:
                # workers must import the same modules as this process, including test modules
                path = os.pathsep.join(p for p in sys.path if p)
                self._shutdown = start_local_ray(
                    ray,
                    num_cpus=jobs,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
        self._remote = ray.remote(num_cpus=1)(execute_point)

    def map(self, points: Sequence[Point]) -> Iterator[PointResult]:
        ray = self._ray
        refs: dict[Any, Point] = {}
        pending: list[Any] = []
        try:
            refs = {self._remote.remote(p): p for p in points}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    p = refs[ref]
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - task or node lost
                        yield PointResult(
                            p.experiment, p.config, p.hash, error=f"ray task failed: {exc!r}"
                        )
        except BaseException:  # interrupted, or the consumer stopped (GeneratorExit)
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort; close() stops a local Ray anyway
                    pass
            raise

    def close(self) -> None:
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown()


def make_executor(kind: str, jobs: int, address: str | None = None) -> Executor:
    if kind == "ray":
        return RayExecutor(jobs, address)
    if kind != "local":
        raise ValueError(f"unknown executor {kind!r} (choose local or ray)")
    return SerialExecutor() if jobs <= 1 else LocalPoolExecutor(jobs)


@dataclass
class SweepOutcome:
    """Results of every requested point, in request order, and what was reused or failed."""

    results: list[PointResult]
    computed: int
    reused: int
    failed: list[PointResult]


def run_sweep(
    points: Sequence[Point],
    store: PointStore,
    executor: Executor,
    *,
    fresh: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> SweepOutcome:
    """Compute the points not yet in ``store`` (all of them with ``fresh``), storing each as it
    finishes; failed points are returned, never stored.

    SIGTERM and SIGHUP raise :class:`core.shutdown.Terminated` (a KeyboardInterrupt) meanwhile
    (main thread only; the previous handlers are restored); on any interrupt the executor's
    running points are stopped and the finished ones are already stored."""
    with interrupt_on_signals():
        return _run_sweep(points, store, executor, fresh=fresh, progress=progress)


def _run_sweep(
    points: Sequence[Point],
    store: PointStore,
    executor: Executor,
    *,
    fresh: bool,
    progress: Callable[[int], Any] | None,
) -> SweepOutcome:
    stored: dict[str, PointResult] = {}
    todo: list[Point] = []
    for p in points:
        found = None if fresh else store.load(p.hash)
        if found is not None:
            stored[p.hash] = found
        else:
            todo.append(p)
    failed: list[PointResult] = []
    computed = 0
    if progress is not None and stored:
        progress(len(stored))
    # exclusive points measure wall-clock time on this machine: they run after the others,
    # one at a time in this process, with no other point competing for the cores
    shared = [p for p in todo if not p.exclusive]
    alone = [p for p in todo if p.exclusive]
    batches = [(executor, shared), (SerialExecutor(), alone)]
    for runner, batch in batches:
        if not batch:
            continue
        results = runner.map(batch)
        try:
            for res in results:
                if res.error is None:
                    store.save(res)
                    stored[res.hash] = res
                    computed += 1
                else:
                    failed.append(res)
                if progress is not None:
                    progress(1)
        finally:
            # an interrupt raised here, outside the generator, stops its workers now, not
            # whenever the generator is collected
            if hasattr(results, "close"):
                results.close()
    ordered = [stored[p.hash] for p in points if p.hash in stored]
    return SweepOutcome(ordered, computed, len(points) - len(todo), failed)

"""Process groups for the parallel model: gloo on CPU, NCCL on GPUs, with a timeout everywhere.

Two ways to start ranks:

- ``torchrun --nproc-per-node N script.py`` (or with ``--nnodes``/``--rdzv-endpoint`` across
  machines): every process calls :func:`init_distributed`, which reads torchrun's ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- :class:`LocalGroup` (or :func:`spawn` for one call): N processes on this machine that stay up
  and run functions ``fn(comm, *args)`` on every rank, returning each rank's result.

Every collective goes through :class:`Comm`, whose process group has a timeout: a rank that
died makes its peers fail at their next collective (at once on a closed connection, or after
the timeout) with a :class:`CollectiveError` naming the rank and the collective, and
:class:`LocalGroup` reports a dead or failed rank as :class:`RankFailedError` instead of
waiting for it.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "CollectiveError",
    "Comm",
    "LocalGroup",
    "RankFailedError",
    "init_distributed",
    "spawn",
]

TIMEOUT_ENV = "SERVELAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
"""Seconds a collective waits for its peers before it fails (``$SERVELAB_DIST_TIMEOUT``)."""


class CollectiveError(RuntimeError):
    """A collective failed: a peer rank died, hung past the timeout, or sent mismatched data."""


class RankFailedError(RuntimeError):
    """A rank of a :class:`LocalGroup` raised, exited or did not answer in time."""


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return float(timeout_s)
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


@dataclass
class Comm:
    """This rank's handle on its process group: rank, world size, device, and the collectives
    the parallel layers use (each raises :class:`CollectiveError` with the rank and the
    collective's name when it fails or times out).

    A world of one (``group`` None, no process group) makes every collective the identity, so
    sharded code runs unchanged in one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: Any = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def _run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RuntimeError, dist.DistError) as e:  # gloo/NCCL errors, timeouts
            raise CollectiveError(
                f"rank {self.rank} of {self.world_size} ({self.backend}): {name} failed: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}. "
                f"A peer rank died, or did not reach this {name} within {self.timeout_s:g} s "
                f"(${TIMEOUT_ENV})"
            ) from e

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place; returns ``t``."""
        if self.is_distributed:
            self._run("all_reduce", lambda: dist.all_reduce(t, group=self.group))
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (same shape on all ranks) concatenated along dim 0."""
        if not self.is_distributed:
            return t
        out = torch.empty(
            (self.world_size * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device
        )
        self._run(
            "all_gather", lambda: dist.all_gather_single(out, t.contiguous(), group=self.group)
        )
        return out

    def all_gather_uneven(
        self, t: torch.Tensor, counts: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Every rank's ``t`` (same trailing shape, any number of rows) concatenated along
        dim 0, in rank order. ``counts``: every rank's number of rows, when all ranks know
        them (saves one all-gather)."""
        if not self.is_distributed:
            return t
        if counts is None:
            counts = self.all_gather(torch.tensor([t.shape[0]], device=t.device)).tolist()
        pad = max(counts)
        padded = t.new_zeros((pad, *t.shape[1:]))
        padded[: t.shape[0]] = t
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r * pad : r * pad + n] for r, n in enumerate(counts)])

    def all_to_all(
        self, t: torch.Tensor, send_counts: Sequence[int], recv_counts: Sequence[int]
    ) -> torch.Tensor:
        """Rows ``t[sum(send_counts[:r]) : ...]`` go to rank ``r``; returns the rows received,
        from rank 0 first (``sum(recv_counts)`` of them)."""
        if not self.is_distributed:
            return t
        out = t.new_empty((int(sum(recv_counts)), *t.shape[1:]))
        self._run(
            "all_to_all",
            lambda: dist.all_to_all_single(
                out,
                t.contiguous(),
                output_split_sizes=list(map(int, recv_counts)),
                input_split_sizes=list(map(int, send_counts)),
                group=self.group,
            ),
        )
        return out

    def exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        """``send_counts[r]`` = rows this rank sends to rank ``r``; returns the rows each rank
        sends to this one (an all-to-all of one int per pair)."""
        if not self.is_distributed:
            return send_counts
        out = torch.empty_like(send_counts)
        self._run(
            "all_to_all (counts)",
            lambda: dist.all_to_all_single(out, send_counts.contiguous(), group=self.group),
        )
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``t`` of rank ``src`` on every rank, in place; returns ``t``."""
        if self.is_distributed:
            self._run("broadcast", lambda: dist.broadcast(t, src=src, group=self.group))
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """A picklable object of rank ``src``, on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj]
        self._run(
            "broadcast_object", lambda: dist.broadcast_object_list(box, src=src, group=self.group)
        )
        return box[0]

    def barrier(self) -> None:
        if self.is_distributed:
            self._run("barrier", lambda: dist.barrier(group=self.group))


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"${name} is not set: start with torchrun, or pass it")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not an integer") from None


def init_distributed(
    backend: str | None = None,
    *,
    timeout_s: float | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
) -> Comm:
    """Join (or reuse) the default process group and return this rank's :class:`Comm`.

    Rank, world size and local rank default to torchrun's ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` (a missing ``WORLD_SIZE`` means one process: no group is made); the
    rendezvous address to ``MASTER_ADDR``/``MASTER_PORT``. ``backend`` None picks NCCL when
    CUDA is available, else gloo; with NCCL each rank uses ``cuda:<local rank>``.
    """
    world = world_size if world_size is not None else _env_int("WORLD_SIZE", 1)
    rank = rank if rank is not None else _env_int("RANK", 0)
    local = local_rank if local_rank is not None else _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA GPUs; use 'gloo' on CPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    timeout = _timeout_s(timeout_s)
    if world == 1:
        return Comm(rank, 1, local, backend, device, timeout, None)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"${var} is not set: start with torchrun, or set it")
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout),
        )
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(
            f"a process group of {dist.get_world_size()} ranks (this one rank "
            f"{dist.get_rank()}) already exists; asked for rank {rank} of {world}"
        )
    return Comm(rank, world, local, backend, device, timeout, dist.group.WORLD)


# --------------------------------------------------------------------------------------------
# Local processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world: int,
    port: int,
    backend: str,
    timeout_s: float,
    num_threads: int,
    tasks: Any,
    results: Any,
) -> None:
    # torchrun's variables, so code on the rank that calls init_distributed() joins this group
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(num_threads)
    # join only when every rank has started (imports can take longer than a short timeout)
    results.put((rank, "started", None))
    if tasks.get() is None:
        return
    try:
        comm = init_distributed(
            backend, timeout_s=timeout_s, rank=rank, world_size=world, local_rank=rank
        )
    except Exception:
        results.put((rank, "error", traceback.format_exc()))
        return
    results.put((rank, "ready", None))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            out = fn(comm, *args)
            pickle.dumps(out)  # fail here, with the traceback, rather than in the queue's thread
            results.put((rank, "ok", out))
        except BaseException:
            results.put((rank, "error", traceback.format_exc()))
    if dist.is_initialized():
        dist.destroy_process_group()


class LocalGroup:
    """``world_size`` processes on this machine, joined in one process group, that run
    functions on request: ``group.run(fn, *args)`` calls ``fn(comm, *args)`` on every rank and
    returns the ranks' results in rank order.

    ``fn`` and its arguments must be picklable (a module-level function); results too (tensors
    are fine). A rank that raises, exits or outlives ``run``'s ``timeout_s`` raises
    :class:`RankFailedError` naming it, after which the group is closed (its processes ended);
    make a new one to go on. Each process runs torch on ``num_threads`` threads. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        world_size: int = 2,
        *,
        backend: str = "gloo",
        timeout_s: float | None = None,
        num_threads: int = 1,
        start_timeout_s: float = 120.0,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.timeout_s = _timeout_s(timeout_s)
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        port = _free_port()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(
                    r,
                    world_size,
                    port,
                    backend,
                    self.timeout_s,
                    num_threads,
                    self._tasks[r],
                    self._results,
                ),
                daemon=True,
                name=f"servelab-rank{r}",
            )
            for r in range(world_size)
        ]
        for p in self._procs:
            p.start()
        self._closed = False
        self._collect("started", "start", start_timeout_s)
        for q in self._tasks:
            q.put("join")
        self._collect("ready", "start", start_timeout_s)

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None) -> list[Any]:
        """``fn(comm, *args)`` on every rank; the results in rank order. ``timeout_s`` (None:
        no limit beyond the collectives' own timeouts) bounds the whole call."""
        if self._closed:
            raise RankFailedError("this LocalGroup is closed (a rank failed before, or close())")
        for q in self._tasks:
            q.put((fn, args))
        return self._collect("ok", getattr(fn, "__name__", repr(fn)), timeout_s)

    def _collect(self, want: str, what: str, timeout_s: float | None) -> list[Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out: dict[int, Any] = {}
        while len(out) < self.world_size:
            try:
                rank, status, payload = self._results.get(timeout=0.1)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    r, code = dead[0]
                    self._fail(f"rank {r} exited with code {code} during {what}")
                if deadline is not None and time.monotonic() > deadline:
                    missing = sorted(set(range(self.world_size)) - set(out))
                    self._fail(f"ranks {missing} did not finish {what} within {timeout_s:g} s")
                continue
            if status != want:
                self._fail(f"rank {rank} failed during {what}:\n{payload}")
            out[rank] = payload
        return [out[r] for r in range(self.world_size)]

    def _fail(self, message: str) -> None:
        self._terminate()
        raise RankFailedError(message)

    def _terminate(self) -> None:
        self._closed = True
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def close(self) -> None:
        """Stop the ranks (cleanly when they are idle)."""
        if self._closed:
            return
        for q in self._tasks:
            q.put(None)
        for p in self._procs:
            p.join(timeout=10)
        self._terminate()

    def __enter__(self) -> LocalGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float | None = None,
    num_threads: int = 1,
) -> list[Any]:
    """Start ``world_size`` local ranks, run ``fn(comm, *args)`` on each, return the results in
    rank order and stop them (see :class:`LocalGroup`)."""
    with LocalGroup(
        world_size, backend=backend, timeout_s=timeout_s, num_threads=num_threads
    ) as group:
        return group.run(fn, *args)

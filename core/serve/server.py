"""Building the engine from a model name and running the app under uvicorn.

:func:`load_engine` turns ``MODEL`` (a checkpoint folder, a zoo model under ``data/models/``,
or a preset name such as ``tiny-llama-125m``) and the engine options into an
:class:`~core.serve.engine.AsyncEngine` and a :class:`~core.serve.app.ServeConfig`.
:class:`HttpServer` serves them on a socket, in the foreground (the CLI) or in a thread (tests,
benchmarks); either way shutdown first lets requests in flight finish (``shutdown_grace_s``),
then fails the rest, then closes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from core.cluster.router import make_router
from core.data import DATA_DIR

from .app import ServeConfig, build_app
from .engine import AsyncEngine, EngineWorker, Worker
from .text import TextCodec

__all__ = ["EngineOptions", "HttpServer", "load_engine", "resolve_model"]


def resolve_model(name: str | os.PathLike[str]) -> Path | dict[str, Any]:
    """A checkpoint folder (as given, or ``data/models/<name>`` for a zoo model), else the
    ``config.json`` dict of preset ``name`` (random weights); ValueError saying what was tried."""
    from core.model.presets import preset_config

    path = Path(name)
    if path.is_dir():
        return path
    zoo = DATA_DIR / "models" / str(name)
    if zoo.is_dir():
        return zoo
    try:
        return preset_config(str(name))
    except ValueError as exc:
        raise ValueError(
            f"MODEL {str(name)!r} is not a folder, not a zoo model under {DATA_DIR / 'models'}, "
            f"and {exc}"
        ) from None


@dataclass
class EngineOptions:
    """The engine and server options of ``servelab serve`` (see docs/core/serve.md)."""

    served_model_name: str | None = None
    fleet: int = 1
    backend: str = "inprocess"
    router: str = "round-robin"
    max_queue: int = 256
    api_key: str | None = None
    max_choices: int = 16
    max_body_bytes: int = 4 * 2**20
    request_timeout_s: float | None = None
    shutdown_grace_s: float = 30.0
    threads: int | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of :class:`~core.engine.LLM` (``max_num_seqs``, ``kv_cache_memory``,
    ``enable_prefix_caching``, ``max_model_len``, ``dtype``, ``seed``, ...)."""


def load_engine(
    model: str | os.PathLike[str], opts: EngineOptions
) -> tuple[AsyncEngine, ServeConfig]:
    """Build ``opts.fleet`` engine replicas of ``model`` (in this process, or as Ray actors
    with ``opts.backend == "ray"``), their router, and the app config."""
    import torch

    from core.engine import LLM
    from core.model.checkpoint import load_tokenizer

    if opts.fleet < 1:
        raise ValueError(f"--fleet must be >= 1, got {opts.fleet}")
    if opts.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {opts.max_queue}")
    if opts.backend not in ("inprocess", "ray"):
        raise ValueError(f"--fleet-backend must be inprocess or ray, got {opts.backend!r}")
    router = make_router(opts.router) if opts.fleet > 1 else None
    if opts.threads:
        torch.set_num_threads(opts.threads)
    source = resolve_model(model)
    workers: list[EngineWorker]
    closers: list[Callable[[], None]] = []
    if opts.backend == "ray":
        workers, info, closers = _ray_workers(source, opts)
        max_model_len, vocab_size, max_num_seqs = (
            info["max_model_len"], info["vocab_size"], info["max_num_seqs"]
        )  # fmt: skip
    else:
        local = [Worker(i, LLM(source, **dict(opts.engine))) for i in range(opts.fleet)]
        sched = local[0].engine.scheduler.config
        max_model_len, max_num_seqs = sched.max_model_len, sched.max_num_seqs
        vocab_size = local[0].llm.config.vocab_size
        workers = list(local)
    tokenizer = load_tokenizer(source) if isinstance(source, Path) else None
    codec = (
        TextCodec(tokenizer, source) if tokenizer is not None and isinstance(source, Path) else None
    )
    max_outstanding = max_num_seqs * opts.fleet + opts.max_queue
    engine = AsyncEngine(workers, router, max_outstanding=max_outstanding, closers=closers)
    cfg = ServeConfig(
        model_name=opts.served_model_name or str(model),
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        codec=codec,
        api_key=opts.api_key,
        max_choices=opts.max_choices,
        max_body_bytes=opts.max_body_bytes,
        request_timeout_s=opts.request_timeout_s,
        shutdown_grace_s=opts.shutdown_grace_s,
    )
    return engine, cfg


def _ray_workers(
    source: Path | dict[str, Any], opts: EngineOptions
) -> tuple[list[EngineWorker], dict[str, int], list[Callable[[], None]]]:
    """``opts.fleet`` :class:`~core.serve.remote.ActorWorker` actors (one CPU each) on the Ray
    instance running, or on a local one this server starts and stops."""
    import logging
    import sys

    try:
        import ray
    except ImportError as exc:
        raise ValueError("--fleet-backend ray needs Ray: pip install -e '.[ray]'") from exc
    from core.shutdown import start_local_ray

    from .remote import ActorWorker, RemoteWorker

    closers: list[Callable[[], None]] = []
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in sys.path if p)  # actors import what we import
        closers.append(
            start_local_ray(
                ray,
                num_cpus=opts.fleet,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                object_store_memory=100 * 2**20,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
        )
    cls: Any = ray.remote(ActorWorker).options(num_cpus=1, max_concurrency=4, max_restarts=0)
    actors = [
        cls.remote(i, source, dict(opts.engine), opts.threads or 1) for i in range(opts.fleet)
    ]

    def stop_actors() -> None:
        for a in actors:
            ray.kill(a)

    closers.insert(0, stop_actors)
    try:
        infos = ray.get([a.describe.remote() for a in actors], timeout=600)
    except BaseException:
        for close in closers:
            close()
        raise
    return [RemoteWorker(i, a, ray) for i, a in enumerate(actors)], infos[0], closers


class _Uvicorn(uvicorn.Server):
    """uvicorn, but shutdown starts draining the engine before waiting for connections: the
    requests in flight finish within the grace period or fail with a clear error, so every
    connection ends with an answer."""

    engine: AsyncEngine
    grace_s: float

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.engine.begin_shutdown(self.grace_s)
        await super().shutdown(sockets)


class HttpServer:
    """The app on ``host:port`` (port 0: any free port; :attr:`port` tells which).

    :meth:`run` serves in the foreground until SIGINT/SIGTERM; :meth:`start` serves in a
    thread and returns once the server accepts connections; :meth:`stop` shuts it down
    gracefully (see the module doc) and waits.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cfg: ServeConfig,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_level: str = "warning",
    ) -> None:
        self.engine, self.cfg = engine, cfg
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        # listen now, not when uvicorn starts: a client told the address (the CLI prints it
        # before run()) waits in the backlog instead of being refused while the app starts
        self.sock.listen(2048)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(engine, cfg),
            log_level=log_level,
            timeout_graceful_shutdown=int(cfg.shutdown_grace_s) + 5,
            timeout_keep_alive=5,
        )
        self.server = _Uvicorn(config)
        self.server.engine, self.server.grace_s = engine, cfg.shutdown_grace_s
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 60.0) -> HttpServer:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
            name="serve-http",
            daemon=True,
        )
        self._thread.start()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started serving")
            if waited > timeout_s:
                raise TimeoutError(f"the server did not start within {timeout_s:g} s")
            threading.Event().wait(0.01)
            waited += 0.01
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Engine replicas as Ray actors behind the server (``--fleet N --fleet-backend ray``).

:class:`ActorWorker` is the body of one actor: a :class:`~core.serve.engine.Worker` stepped by
the actor's own thread, so replicas run in parallel. :class:`RemoteWorker` is its driver-side
stand-in, which :class:`~core.serve.engine.AsyncEngine` drives like a local worker: each
:meth:`RemoteWorker.pump` is one ``exchange`` call that hands over new submissions and aborts
and returns the updates since the previous call, waiting up to :attr:`RemoteWorker.WAIT_S` for
one, so tokens stream with at most that much delay and an idle replica costs no busy loop.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from .engine import ENGINE_FAILED, Update, Worker

__all__ = ["ActorWorker", "RemoteWorker"]


class ActorWorker:
    """A :class:`Worker` with its own stepping thread (the body of a Ray actor; methods run on
    the caller's thread and never wait for more than one step, except ``exchange``'s bounded
    wait for output)."""

    IDLE_WAIT_S = 0.05

    def __init__(self, index: int, model: Any, engine: dict[str, Any], threads: int) -> None:
        import torch

        from core.engine import LLM

        torch.set_num_threads(threads)
        self.worker = Worker(index, LLM(model, **engine))
        self.error: str | None = None
        self._lock = threading.Lock()  # the worker: the loop, cached_prefix
        self._out_ready = threading.Condition()
        self._out: list[tuple[str, Update]] = []
        self._inbox: deque[tuple[str, list[int], Any]] = deque()
        self._aborts: deque[str] = deque()
        self._load = (0, 0)
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(
            target=self._loop, name=f"serve-replica-{index}", daemon=True
        )
        self._thread.start()

    def describe(self) -> dict[str, int]:
        """What the server needs to know of the model: context, vocabulary, batch size."""
        cfg = self.worker.engine.scheduler.config
        return {
            "max_model_len": int(cfg.max_model_len),
            "max_num_seqs": int(cfg.max_num_seqs),
            "vocab_size": int(self.worker.llm.config.vocab_size),
        }

    def exchange(
        self, subs: Sequence[tuple[str, list[int], Any]], aborts: Sequence[str], wait_s: float
    ) -> dict[str, Any]:
        """Queue ``subs`` and ``aborts``; the updates since the last call (waiting up to
        ``wait_s`` for one), the load, step counters, KV stats and the error if it died."""
        if subs or aborts:
            self._inbox.extend(subs)
            self._aborts.extend(aborts)
            self._wake.set()
        with self._out_ready:
            if not self._out and self.error is None and wait_s > 0:
                self._out_ready.wait(wait_s)
            out, self._out = self._out, []
        w = self.worker
        return {
            "updates": out,
            "load": self._load,
            "steps": w.steps,
            "busy_s": w.busy_s,
            "kv": w.kv_stats(),
            "error": self.error,
        }

    def cached_prefix(self, token_ids: list[int]) -> int:
        with self._lock:
            return self.worker.cached_prefix(token_ids)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(10.0)

    def _loop(self) -> None:
        w = self.worker
        try:
            while not self._stop:
                self._wake.clear()
                with self._lock:
                    while self._inbox:
                        w.add(*self._inbox.popleft())
                    while self._aborts:
                        w.abort(self._aborts.popleft())
                    updates = w.pump()
                    self._load = (w.outstanding_requests(), w.outstanding_tokens())
                if updates:
                    with self._out_ready:
                        self._out += updates
                        self._out_ready.notify_all()
                if w.idle() and not self._inbox and not self._aborts:
                    self._wake.wait(self.IDLE_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - reported to the driver by exchange()
            self.error = f"{type(exc).__name__}: {exc}"
            with self._out_ready:
                self._out += w.fail_all(f"{ENGINE_FAILED}: replica {w.index}: {self.error}")
                self._out_ready.notify_all()


class RemoteWorker:
    """The driver's side of an :class:`ActorWorker`: the worker interface
    :class:`~core.serve.engine.AsyncEngine` drives, and a ReplicaView for routers (its load is
    the actor's at the last exchange plus what was sent since)."""

    WAIT_S = 0.01
    REPLY_TIMEOUT_S = 120.0

    def __init__(self, index: int, actor: Any, ray: Any) -> None:
        self.index, self.actor, self._ray = index, actor, ray
        self.steps = 0
        self.busy_s = 0.0
        self._live: set[str] = set()
        self._subs: list[tuple[str, list[int], Any]] = []
        self._aborts: list[str] = []
        self._load = (0, 0)
        self._kv = (0.0, 0)

    def outstanding_requests(self) -> int:
        return len(self._live)

    def outstanding_tokens(self) -> int:
        pending = sum(len(ids) + int(sp.max_tokens) for _, ids, sp in self._subs)
        return self._load[1] + pending

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        ref = self.actor.cached_prefix.remote(list(token_ids))
        return int(self._ray.get(ref, timeout=self.REPLY_TIMEOUT_S))

    def add(self, request_id: str, prompt_token_ids: list[int], sampling: Any) -> None:
        self._subs.append((request_id, list(prompt_token_ids), sampling))
        self._live.add(request_id)

    def abort(self, request_id: str) -> None:
        if request_id in self._live:
            self._aborts.append(request_id)

    def idle(self) -> bool:
        return not (self._live or self._subs or self._aborts)

    def pump(self) -> list[tuple[str, Update]]:
        if self.idle():
            return []
        subs, aborts, self._subs, self._aborts = self._subs, self._aborts, [], []
        ref = self.actor.exchange.remote(subs, aborts, self.WAIT_S)
        reply = self._ray.get(ref, timeout=self.REPLY_TIMEOUT_S)
        self._load, self._kv = tuple(reply["load"]), tuple(reply["kv"])
        self.steps, self.busy_s = int(reply["steps"]), float(reply["busy_s"])
        updates: list[tuple[str, Update]] = reply["updates"]
        for rid, update in updates:
            if update.finished:
                self._live.discard(rid)
        if reply["error"] is not None:  # the updates carry its requests' failure
            raise RuntimeError(f"replica {self.index} failed: {reply['error']}")
        return updates

    def kv_stats(self) -> tuple[float, int]:
        return float(self._kv[0]), int(self._kv[1])

    def fail_all(self, message: str) -> list[tuple[str, Update]]:
        out = [(rid, Update([], True, "error", message)) for rid in self._live]
        self._live.clear()
        return out

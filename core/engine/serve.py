"""Serving a timed request stream with the real engine (open loop, requests arrive on time).

:func:`replay` is the engine's counterpart of :meth:`core.sim.Simulator.run` for one replica:
requests join the engine when the clock passes their arrival time, the engine steps while it
has work and otherwise waits for the next arrival. With the same scheduler, the same requests
and the same step times, both make the same decisions (tested).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from core.sched.request import EngineRequest
from core.workload.schema import Request

from .engine import Engine
from .sampling import SamplingParams


def greedy_for(req: Request) -> SamplingParams:
    """Greedy decoding of exactly the request's output length (EOS ignored), the usual
    setting for serving benchmarks."""
    return SamplingParams(temperature=0.0, max_tokens=max(1, req.output_len), ignore_eos=True)


def replay(engine: Engine, requests: Iterable[Request], *,
           sampling: Callable[[Request], Any] = greedy_for,
           sleep: Callable[[float], None] = time.sleep,
           progress: Callable[[int], Any] | None = None) -> list[EngineRequest]:
    """Serve ``requests`` (each with ``prompt_token_ids``) in arrival order on ``engine``;
    returns their engine requests, finished, with timelines in ``engine.clock`` seconds.

    Arrival times are offsets from the moment replay starts. Raises ValueError naming a request
    without token ids.
    """
    pending = sorted(requests, key=lambda r: r.arrival_time)
    for r in pending:
        if r.prompt_token_ids is None:
            raise ValueError(f"request {r.request_id!r} has no prompt_token_ids to serve")
    t0 = engine.clock()
    out: list[EngineRequest] = []
    i = 0
    while i < len(pending) or engine.has_unfinished_requests():
        now = engine.clock()
        while i < len(pending) and t0 + pending[i].arrival_time <= now:
            r = pending[i]
            out.append(engine.add_request(
                r.request_id, list(r.prompt_token_ids), sampling(r),
                arrival_time=t0 + r.arrival_time, interceptions=r.interceptions))
            if out[-1].is_finished and progress is not None:
                progress(1)
            i += 1
        s = engine.scheduler
        if s.running or s.waiting or s.swapped:
            done = engine.step()
            if progress is not None and done:
                progress(len(done))
            continue
        wake = [t0 + pending[i].arrival_time] if i < len(pending) else []
        nxt = s.next_event_time()
        if nxt is not None:
            wake.append(nxt)
        if not wake:
            break
        sleep(max(0.0, min(wake) - engine.clock()))
    return out

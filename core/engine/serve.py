"""Serving a timed request stream with the real engine.

:func:`replay` (open loop: requests arrive on time) is the engine's counterpart of
:meth:`core.sim.Simulator.run` for one replica: requests join the engine when the clock passes
their arrival time, the engine steps while it has work and otherwise waits for the next arrival.
With the same scheduler, the same requests and the same step times, both make the same
decisions (tested).

:func:`serve_sessions` (closed loop) serves multi-turn sessions: a turn is submitted only after
the previous turn of its session finished and its user thought, and its prompt carries the
tokens the engine actually generated, so a prefix cache sees the reuse a real chat would give.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.sched.request import EngineRequest, RequestStatus
from core.workload.schema import Request

from .engine import Engine
from .sampling import SamplingParams


def greedy_for(req: Request) -> SamplingParams:
    """Greedy decoding of exactly the request's output length (EOS ignored), the usual
    setting for serving benchmarks."""
    return SamplingParams(temperature=0.0, max_tokens=max(1, req.output_len), ignore_eos=True)


def replay(
    engine: Engine,
    requests: Iterable[Request],
    *,
    sampling: Callable[[Request], Any] = greedy_for,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], Any] | None = None,
) -> list[EngineRequest]:
    """Serve ``requests`` (each with ``prompt_token_ids``) in arrival order on ``engine``;
    returns their engine requests, finished, with timelines in ``engine.clock`` seconds.

    Arrival times are offsets from the moment replay starts; a request's LoRA adapter is
    ``metadata["lora"]``, as in the simulator. Raises ValueError naming a request without
    token ids.
    """
    pending = sorted(requests, key=lambda r: r.arrival_time)
    prompts = [_prompt_ids(r) for r in pending]  # every request checked before one is served
    t0 = engine.clock()
    out: list[EngineRequest] = []
    i = 0
    while i < len(pending) or engine.has_unfinished_requests():
        now = engine.clock()
        while i < len(pending) and t0 + pending[i].arrival_time <= now:
            r = pending[i]
            out.append(
                engine.add_request(
                    r.request_id,
                    prompts[i],
                    sampling(r),
                    arrival_time=t0 + r.arrival_time,
                    interceptions=r.interceptions,
                    lora_request=r.metadata.get("lora"),
                )
            )
            if out[-1].is_finished and progress is not None:
                progress(1)
            i += 1
        s = engine.scheduler
        if _has_work(s, now):
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


_FAILED = (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR)


def _has_work(s: Any, now: float) -> bool:
    """Whether a step would do something now: a request to run, or a paused one whose call
    has returned (only a step resumes it; waiting for it would spin forever)."""
    if s.running or s.waiting or s.swapped:
        return True
    nxt = s.next_event_time()
    return nxt is not None and nxt <= now


def _prompt_ids(r: Request) -> list[int]:
    """A copy of ``r``'s prompt token ids; ValueError naming ``r`` when it has none."""
    if r.prompt_token_ids is None:
        raise ValueError(f"request {r.request_id!r} has no prompt_token_ids to serve")
    return list(r.prompt_token_ids)


def _user_delta(prev: Request, req: Request) -> list[int] | None:
    """The tokens ``req`` adds after ``prev``'s prompt and reference output, or None when its
    prompt does not extend them (e.g. an agent trajectory that collapsed old observations)."""
    ref = list(prev.prompt_token_ids or []) + list(prev.output_token_ids or [])
    cur = req.prompt_token_ids or []
    if prev.output_token_ids is None or len(cur) < len(ref) or cur[: len(ref)] != ref:
        return None
    return list(cur[len(ref) :])


def _sessions(requests: Iterable[Request]) -> list[list[Request]]:
    groups: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        if r.prompt_token_ids is None:
            raise ValueError(f"request {r.request_id!r} has no prompt_token_ids to serve")
        groups[r.session_id if r.session_id is not None else f"\0{r.request_id}"].append(r)
    sessions = [sorted(g, key=lambda r: (r.turn, r.arrival_time)) for g in groups.values()]
    return sorted(sessions, key=lambda g: (g[0].arrival_time, g[0].request_id))


def serve_sessions(
    engine: Engine,
    requests: Iterable[Request],
    *,
    sampling: Callable[[Request], Any] = greedy_for,
    think_time_scale: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], Any] | None = None,
) -> list[EngineRequest]:
    """Serve multi-turn sessions closed-loop; returns every turn's engine request, finished.

    Contract:
    - requests are grouped by ``session_id`` (one without is a session of its own) and ordered
      by ``turn``. A session's first turn arrives at its ``arrival_time`` (an offset from the
      start); turn k arrives ``think_time_s * think_time_scale`` after turn k-1 finished.
    - turn k's prompt is turn k-1's prompt + the tokens the engine generated for it + the
      user's new tokens (what the workload's turn k adds after turn k-1's prompt and reference
      ``output_token_ids``). When the workload's prompt does not extend the previous turn that
      way, it is served as given.
    - an engine request that fails (e.g. a prompt over the model's context) ends its session.

    Raises ValueError naming a request without token ids, or a negative ``think_time_scale``.
    """
    if think_time_scale < 0:
        raise ValueError(f"think_time_scale={think_time_scale} must be >= 0")
    sessions = _sessions(requests)
    t0 = engine.clock()
    # (ready time, session index, turn index, prompt)
    ready: list[tuple[float, int, int, list[int]]] = [
        (t0 + g[0].arrival_time, i, 0, list(g[0].prompt_token_ids or []))
        for i, g in enumerate(sessions)
    ]
    heapq.heapify(ready)
    live: dict[str, tuple[int, int]] = {}  # request id -> (session, turn)
    out: list[EngineRequest] = []

    def submit(at: float, si: int, k: int, prompt: list[int]) -> None:
        r = sessions[si][k]
        er = engine.add_request(
            r.request_id, prompt, sampling(r), arrival_time=at, interceptions=r.interceptions
        )
        out.append(er)
        live[r.request_id] = (si, k)
        if er.is_finished:
            finished([er])

    def finished(done: Sequence[EngineRequest]) -> None:
        for er in done:
            si, k = live.pop(er.request_id)
            if progress is not None:
                progress(1)
            g = sessions[si]
            if k + 1 >= len(g) or er.status in _FAILED:
                continue
            delta = _user_delta(g[k], g[k + 1])
            nxt = g[k + 1]
            prompt = (
                list(er.token_ids) + delta
                if delta is not None
                else list(nxt.prompt_token_ids or [])
            )
            end = er.timeline.finish_time if er.timeline.finish_time is not None else engine.clock()
            heapq.heappush(ready, (end + nxt.think_time_s * think_time_scale, si, k + 1, prompt))

    while ready or engine.has_unfinished_requests():
        now = engine.clock()
        while ready and ready[0][0] <= now:
            submit(*heapq.heappop(ready))
        s = engine.scheduler
        if _has_work(s, now):
            done = engine.step()
            if done:
                finished(done)
            continue
        wake = [ready[0][0]] if ready else []
        nxt_event = s.next_event_time()
        if nxt_event is not None:
            wake.append(nxt_event)
        if not wake:
            break
        sleep(max(0.0, min(wake) - engine.clock()))
    return out

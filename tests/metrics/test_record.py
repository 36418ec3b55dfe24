"""RequestRecord: hand-computed metrics, validation, pause removal, engine constructors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.kv.backend import PagedKVBackend
from core.metrics import RequestRecord
from core.sched import EngineRequest, RequestStatus, Scheduler, SchedulerConfig
from core.workload.schema import Interception
from tests.fakes import Params
from tests.metrics.util import make


def test_hand_computed_request():
    # arrives at 1.0; tokens at 1.5, 1.75, 2.0, 2.5; finishes with the last token
    r = make("a", 1.0, (1.5, 1.75, 2.0, 2.5))
    assert r.ttft == 0.5
    assert r.e2e == 1.5
    assert r.tpot == pytest.approx(1.0 / 3.0, abs=1e-15)
    assert r.normalized_latency == 0.375
    assert r.itl == [0.25, 0.25, 0.5]
    assert r.completed and r.pause_time == 0.0


def test_undefined_metrics_are_none():
    one = make("one", 0.0, (0.25,))
    assert one.ttft == 0.25 and one.tpot is None and one.itl == [] and one.e2e == 0.25
    err = make("err", 3.0, (), reason="error")
    assert err.ttft is None and err.tpot is None and err.normalized_latency is None
    assert err.e2e == 0.0 and not err.completed
    running = make("run", 0.0, (1.0, 2.0), reason=None)
    assert running.e2e is None and running.tpot is None and running.ttft == 1.0
    assert not running.completed
    assert make("x", 0, (1.0,), prompt_tokens=0).hit_rate is None


def test_tpot_without_token_times_uses_counts():
    r = RequestRecord(
        "c", arrival=0.0, first_token=1.0, finish=3.0, output_tokens=5, finish_reason="length"
    )
    assert r.tpot == 0.5 and r.normalized_latency == 0.6 and r.itl == []


def test_hit_rate_clamps_to_prompt():
    assert make("h", 0, (1.0,), prompt_tokens=40, cached_tokens=10).hit_rate == 0.25
    # after a preemption the cached count may cover generated tokens too
    assert make("h", 0, (1.0,), prompt_tokens=40, cached_tokens=55).hit_rate == 1.0


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(first_token=0.5, token_times=(0.5, 0.7), output_tokens=3), "token_times"),
        (dict(first_token=-1.0), "before arrival"),
        (dict(finish=-1.0), "before arrival"),
        (dict(first_token=0.5, token_times=(0.6,), output_tokens=1), "token_times\\[0\\]"),
        (dict(first_token=0.5, token_times=(0.5, 0.4), output_tokens=2), "non-decreasing"),
        (dict(first_token=0.5, token_times=(0.5, 0.9), output_tokens=2, finish=0.8), "last token"),
        (dict(output_tokens=-1), "output_tokens"),
        (dict(first_token=float("nan")), "finite"),
        (dict(pause_spans=((1, -2.0),)), "pause_spans"),
    ],
)
def test_inconsistent_timelines_are_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg) as exc:
        RequestRecord("bad-id", arrival=0.0, **kw)
    assert "bad-id" in str(exc.value)


def test_without_pauses_shifts_tokens_after_the_call():
    r = make("p", 1.0, (1.5, 1.75, 2.0, 2.5), pause_spans=((2, 0.125),))
    q = r.without_pauses()
    assert q.token_times == (1.5, 1.75, 1.875, 2.375)
    assert q.finish == 2.375 and q.e2e == 1.375 and q.ttft == r.ttft
    assert q.itl == [0.25, 0.125, 0.5]
    assert q.pause_spans == () and r.pause_time == 0.125
    assert make("n", 0, (1.0,)).without_pauses() is not None


def test_without_pauses_clamps_instead_of_going_back_in_time():
    # the recorded call is longer than the gap it fell in: times stay ordered
    r = make("p", 0.0, (1.0, 2.0, 2.5), pause_spans=((1, 3.0),))
    q = r.without_pauses()
    assert q.token_times == (1.0, 1.0, 1.0) and q.finish == 1.0


# -- constructors from the engine's objects --------------------------------------------------


def _run(sched: Scheduler, now: float) -> None:
    """Step once per second from ``now`` (after every arrival: the scheduler trusts its
    driver to add requests when they arrive)."""
    while sched.has_unfinished():
        out = sched.schedule(now)
        sampled = {c.request.request_id: 7 for c in out.chunks if c.sample}
        sched.update(out, sampled, now)
        now += 1.0
        assert now < 1000


def test_from_request_reads_a_scheduled_request():
    sched = Scheduler(
        SchedulerConfig(max_num_batched_tokens=64, max_model_len=128, vocab_size=50),
        PagedKVBackend(64, 4),
    )
    tool = EngineRequest(
        "tool",
        list(range(3, 11)),
        Params(5),
        arrival_time=0.0,
        interceptions=[Interception(after_output_tokens=2, duration_s=4.0, returned_tokens=3)],
    )
    plain = EngineRequest("plain", list(range(3, 9)), Params(3), arrival_time=1.0)
    too_long = EngineRequest("long", list(range(200)), Params(3), arrival_time=2.0)
    for req in (tool, plain, too_long):
        sched.add_request(req)
    _run(sched, 2.0)

    r = RequestRecord.from_request(tool, replica=2)
    tl = tool.timeline
    assert r.request_id == "tool" and r.replica == 2 and r.finish_reason == "length"
    assert r.output_tokens == 5 and r.prompt_tokens == 8 and len(r.token_times) == 5
    assert r.ttft == tl.first_token_time == 2.0 and r.e2e == tl.finish_time
    assert r.pauses == 1 and r.pause_spans == ((2, 4.0),)
    # the call's 4 s sit between the 2nd and 3rd token; removing them shortens only that gap
    q = r.without_pauses()
    assert q.e2e == r.e2e - 4.0
    assert q.itl[1] == r.itl[1] - 4.0 and q.itl[0] == r.itl[0] and q.itl[2:] == r.itl[2:]

    p = RequestRecord.from_request(plain)
    assert p.arrival == 1.0 and p.pause_spans == () and p.finish_reason == "length"
    assert p.tpot * 2 + p.ttft == p.e2e

    e = RequestRecord.from_request(too_long)
    assert too_long.status == RequestStatus.FINISHED_ERROR
    assert e.finish_reason == "error" and e.ttft is None and not e.completed


def test_from_request_orders_interceptions_sharing_a_threshold():
    req = SimpleNamespace(
        request_id="r",
        num_prompt_tokens=4,
        num_output_tokens=3,
        num_cached_tokens=0,
        status=RequestStatus.FINISHED_STOPPED,
        next_interception=2,
        interceptions=[Interception(1, 0.5, 0), Interception(1, 0.25, 0), Interception(1, 9, 0)],
        timeline=SimpleNamespace(
            arrival_time=0.0,
            first_token_time=1.0,
            token_times=[1.0, 2.0, 3.0],
            finish_time=3.0,
            num_preemptions=0,
            num_pauses=2,
            recomputed_tokens=0,
        ),
    )
    r = RequestRecord.from_request(req)
    # one interception fires per sampled token; the third never fired
    assert r.pause_spans == ((1, 0.5), (2, 0.25)) and r.finish_reason == "stop"


def test_from_output_reads_request_output_shape():
    sched = Scheduler(
        SchedulerConfig(max_num_batched_tokens=64, max_model_len=128), PagedKVBackend(64, 4)
    )
    req = EngineRequest("o", list(range(3, 9)), Params(4), arrival_time=0.5)
    sched.add_request(req)
    _run(sched, 1.0)
    # the fields RequestOutput.from_request fills (core.engine imports torch; this stays light)
    out = SimpleNamespace(
        request_id="o",
        prompt_token_ids=list(req.prompt_token_ids),
        token_ids=list(req.output_token_ids),
        finished=True,
        finish_reason=req.status.finish_reason,
        error=None,
        num_cached_tokens=req.num_cached_tokens,
        metrics=req.timeline.to_dict(),
    )
    assert RequestRecord.from_output(out) == RequestRecord.from_request(req)
    assert RequestRecord.from_output(out, session_id="s1").session_id == "s1"


def test_from_output_without_a_timeline_fails_clearly():
    out = SimpleNamespace(request_id="z", prompt_token_ids=[1], token_ids=[], metrics={})
    with pytest.raises(ValueError, match="'z'.*timeline"):
        RequestRecord.from_output(out)

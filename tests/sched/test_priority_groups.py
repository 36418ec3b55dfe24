"""The scheduler's hook for a per-step admission order (``QueuePolicy.admission_order``) and the
queue policy names: FCFS takes the static path, a policy that declares an order of its own is
asked, and the registry a paper's own policy joins. Preble's priority groups, which use the
hook: tests/artifacts/preble/test_priority.py."""

from __future__ import annotations

import random

import pytest

from core.kv.backend import PagedKVBackend
from core.sched import (
    FCFS,
    POLICIES,
    EngineRequest,
    PriorityPolicy,
    Scheduler,
    SchedulerConfig,
    make_policy,
    register_queue_policy,
)
from tests.fakes import Params


class LIFO(FCFS):
    """Admits the newest waiting request first (a custom order; ``key`` stays FCFS)."""

    name = "lifo"
    custom_admission_order = True

    def admission_order(self, waiting, cached_tokens):
        return list(reversed(waiting))


# ---- names ------------------------------------------------------------------------------------


def test_an_unknown_name_is_rejected_with_the_known_names():
    with pytest.raises(ValueError) as e:
        make_policy("lru")
    msg = str(e.value)
    assert msg.startswith("unknown queue policy 'lru' (known: fcfs, priority")
    assert "import artifacts.preble" in msg and "'module:Class'" in msg


def test_registered_names_and_import_paths():
    assert type(make_policy("fcfs")) is FCFS and type(make_policy("priority")) is PriorityPolicy
    assert list(POLICIES)[:2] == ["fcfs", "priority"]
    p = LIFO()
    assert make_policy(p) is p
    register_queue_policy("lifo-test", LIFO)
    try:
        register_queue_policy("lifo-test", LIFO)  # the same factory again: no-op
        with pytest.raises(ValueError, match="already registered"):
            register_queue_policy("lifo-test", FCFS)
        a, b = make_policy("lifo-test"), make_policy("lifo-test")
        assert type(a) is LIFO and a is not b  # one new policy per scheduler
    finally:
        del POLICIES["lifo-test"]
    assert type(make_policy(f"{__name__}:LIFO")) is LIFO  # an import path: no registration
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        make_policy("no_such_module:Policy")
    with pytest.raises(ValueError, match="not a QueuePolicy"):
        make_policy("core.sched:SchedulerConfig")


# ---- the hook ---------------------------------------------------------------------------------


def test_a_custom_order_is_followed():
    cfg = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=64)
    sched = Scheduler(cfg, PagedKVBackend(64, 4), LIFO())
    for i in range(3):
        sched.add_request(EngineRequest(f"r{i}", [5 + i] * 8, Params(1), arrival_time=float(i)))
    out = sched.schedule(10.0)
    assert [c.request.request_id for c in out.chunks] == ["r2"]  # the newest, one slot
    assert [r.request_id for r in sched.waiting] == ["r0", "r1"]  # still in key order


def test_fcfs_takes_the_static_path():
    """FCFS keeps the key order without asking the cache; a policy that declares an order of
    its own is asked (here one that is the key order and reads the cache: it schedules exactly
    as FCFS does); one that does not declare it is not asked."""

    class SameOrder(FCFS):
        custom_admission_order = True

        def admission_order(self, waiting, cached_tokens):
            for r in waiting:
                cached_tokens(r)
            return list(waiting)

    class Undeclared(FCFS):
        def admission_order(self, waiting, cached_tokens):
            raise AssertionError("asked without custom_admission_order")

    assert FCFS().admission_order([], lambda r: 0) is None
    assert not FCFS.custom_admission_order and SameOrder.custom_admission_order
    results = []
    for policy in (FCFS(), SameOrder(), Undeclared()):
        kv = PagedKVBackend(48, 4)
        peeks = []
        peek = kv.peek_prefix
        kv.peek_prefix = lambda ids, peek=peek, peeks=peeks: peeks.append(1) or peek(ids)
        sched = Scheduler(SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=24), kv, policy)
        rng = random.Random(2)
        for i in range(12):
            n = rng.randint(1, 20)
            prompt = [3] * rng.randint(0, 12) + [rng.randrange(3, 90) for _ in range(n)]
            sched.add_request(
                EngineRequest(
                    f"r{i}", prompt, Params(rng.randint(1, 9)), arrival_time=rng.random() * 3
                )
            )
        trace, now = [], 0.0
        while sched.has_unfinished():
            out = sched.schedule(now)
            trace.append(
                [(c.request.request_id, c.start, c.num_tokens) for c in out.chunks] + out.preempted
            )
            sched.update(out, {c.request.request_id: 4 for c in out.chunks if c.sample}, now)
            now += 1.0
        results.append(trace)
        assert (len(peeks) == 0) is (type(policy) is not SameOrder)
    assert results[0] == results[1] == results[2]
    assert any(out[1:] for out in results[0])  # several requests share steps

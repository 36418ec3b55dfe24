"""CpuClock: the engine thread's CPU seconds plus the waits it skips."""

from __future__ import annotations

import time

import pytest

from core.engine import LLM, CpuClock, replay
from core.workload import Request
from tests.model.conftest import build_hf


def _spin(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def test_waits_pass_at_once_and_time_off_the_cpu_does_not_count():
    clock = CpuClock()
    t0 = time.perf_counter()
    clock.sleep(5.0)  # a call's duration or an arrival gap: passes at once
    clock.sleep(-1.0)  # a wait already over counts as nothing
    assert time.perf_counter() - t0 < 0.5 and clock() >= 5.0 and clock.waited == 5.0
    before = clock()
    time.sleep(0.3)  # the thread off the CPU (as when another process has the core)
    assert clock() - before < 0.1
    before, cpu = clock(), time.thread_time()
    _spin(0.2)  # work on the CPU advances it by its CPU seconds
    spent = time.thread_time() - cpu
    assert spent > 0 and clock() - before == pytest.approx(spent, abs=0.01)
    assert clock() - clock.cpu_s == pytest.approx(5.0, abs=1e-3)


def test_readings_never_decrease():
    clock = CpuClock()
    readings = []
    for k in range(200):
        if k % 7 == 0:
            clock.sleep(0.001)
        readings.append(clock())
    assert readings == sorted(readings)


def test_the_engine_on_a_cpu_clock_serves_gaps_without_sleeping(tmp_path):
    build_hf("llama").save_pretrained(tmp_path)
    llm = LLM(tmp_path, block_size=4, num_kv_blocks=128, max_num_seqs=4, max_model_len=256)
    clock = CpuClock()
    llm.engine.clock = clock
    reqs = [Request(f"r{i}", 10.0 * i, 8, 3, prompt_token_ids=[3 + i] * 8) for i in range(3)]
    t0 = time.perf_counter()
    out = replay(llm.engine, reqs, sleep=clock.sleep)
    assert time.perf_counter() - t0 < 10.0  # 20 s of arrival gaps were not slept
    assert all(r.is_finished and len(r.output_token_ids) == 3 for r in out)
    # each request arrives on the clock at its offset and is served after it, in CPU seconds
    arrivals = [r.timeline.arrival_time for r in out]
    assert [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)] == pytest.approx(
        [10.0, 10.0]
    )
    for r in out:
        assert r.timeline.arrival_time < r.timeline.first_token_time <= r.timeline.finish_time
        assert r.timeline.finish_time - r.timeline.arrival_time < 5.0
    assert clock.waited >= 19.0 and clock.cpu_s > 0

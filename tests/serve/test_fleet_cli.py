"""--fleet N behind a router (by name or import path), and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.cluster.router import RoundRobin
from core.engine import SamplingParams
from core.serve.cli import build_parser, parse_bytes
from core.serve.server import resolve_model
from tests.serve.conftest import MODEL, client_for

ROOT = Path(__file__).resolve().parents[2]


class CountingRouter(RoundRobin):
    """Round-robin that records where each request went (served by import path)."""

    routed: list[int] = []

    def route(self, req, replicas, now):
        i = super().route(req, replicas, now)
        CountingRouter.routed.append(replicas[i].index)
        return i


def test_fleet_routes_over_replicas_with_equal_outputs(start_server, offline):
    prompts = [[4 + i, 9, 30 + i] for i in range(8)]
    want = [
        o.token_ids
        for o in offline.generate(
            prompts, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False
        )
    ]
    CountingRouter.routed = []
    with start_server(fleet=2, router="tests.serve.test_fleet_cli:CountingRouter") as s:
        assert len(s.engine.workers) == 2

        def ask(p):
            r = client_for(s).completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0)
            return r.choices[0].model_extra["token_ids"]

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(ask, prompts))
    assert got == want
    assert sorted(CountingRouter.routed) == [0] * 4 + [1] * 4


def test_model_resolution(model_dir):
    assert resolve_model(model_dir) == model_dir
    assert resolve_model("tiny-llama-125m")["hidden_size"] == 768
    with pytest.raises(ValueError, match="not a folder, not a zoo model"):
        resolve_model("no-such-model")


def test_parser():
    args = build_parser().parse_args(["serve", "m", "--kv-cache-memory", "64MiB", "--fleet", "2"])
    assert (args.model, args.host, args.kv_cache_memory, args.fleet) == (
        "m",
        "127.0.0.1",
        64 * 2**20,
        2,
    )
    assert args.enable_prefix_caching
    assert parse_bytes("2G") == 2 * 10**9 and parse_bytes("1024") == 1024


def test_cli_unknown_model_is_one_clear_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "core.serve", "no-such-model", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no-such-model" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_servelab_serve_answers_and_exits_cleanly_on_sigterm(model_dir, tmp_path):
    """The console script as a user runs it: it binds 127.0.0.1, answers a request, and SIGTERM
    shuts it down cleanly."""
    import re
    import signal

    import httpx

    exe = Path(sys.executable).with_name("servelab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "core.serve.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*cmd, "serve", str(model_dir), "--port", "0", "--served-model-name", MODEL],
            stderr=err, env=env,
        )  # fmt: skip
    try:
        url = None
        end = time.monotonic() + 180
        while url is None and time.monotonic() < end and proc.poll() is None:
            m = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", log.read_text())
            if m:
                url = m.group(1)
            else:
                time.sleep(0.1)
        assert url, f"the server did not report its address:\n{log.read_text()[-3000:]}"
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught, as supervisors expect
        code = proc.wait(120)
        text = log.read_text()
        assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{text[-3000:]}"
        assert "Application shutdown complete" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_without_the_serve_extra_one_clear_error():
    code = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "fastapi":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
import core, core.engine  # the rest of core does not need it
try:
    import core.serve.cli
except ImportError as e:
    print(e)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "core.serve needs the 'serve' extra (fastapi is missing): pip install -e '.[serve]'"
        in out.stdout
    )


@pytest.mark.slow
def test_ray_fleet_streams_equal_outputs_and_aborts(start_server, offline):
    """Two replicas as Ray actors: outputs equal LLM.generate's, streamed token by token, a
    disconnect aborts on the actor, and every request is answered once."""
    pytest.importorskip("ray")
    import httpx

    prompts = [[4 + i, 9, 30 + i] for i in range(6)]
    want = [
        o.token_ids
        for o in offline.generate(
            prompts, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False
        )
    ]
    with start_server(fleet=2, backend="ray", router="least-work", threads=1) as s:

        def ask(p):
            chunks = list(
                client_for(s).completions.create(
                    model=MODEL, prompt=p, max_tokens=6, temperature=0, stream=True
                )
            )
            return [t for c in chunks for t in c.choices[0].model_extra["token_ids"]]

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(ask, prompts))
        assert got == want
        # a long stream that the client drops: aborted on its actor, nothing left in flight
        body = {"model": MODEL, "prompt": [5, 6], "max_tokens": 1500, "stream": True}
        with (
            httpx.Client(timeout=60) as c,
            c.stream("POST", f"{s.url}/v1/completions", json=body) as r,
        ):
            assert next(line for line in r.iter_lines() if line.startswith("data:"))
        end = time.monotonic() + 30
        while s.engine.num_outstanding and time.monotonic() < end:
            time.sleep(0.05)
        assert s.engine.num_outstanding == 0
        assert s.cfg.metrics.finished["abort"] == 1 and s.cfg.metrics.finished["length"] == 6
        assert {w.steps > 0 for w in s.engine.workers} == {True}  # both replicas stepped

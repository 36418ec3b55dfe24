"""Bad input, full queues, disconnects, timeouts, engine failure, shutdown and the API key:
each gets one clear answer, nothing is lost or answered twice, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.serve.conftest import MODEL, client_for

GOOD = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0}


def post(server, body, path="/v1/completions", **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", content=data, headers=headers, timeout=30, **kw)


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


BAD = [
    ("malformed JSON", b'{"model": "tiny-chat", "prompt": [1, 2', 400, None),
    ("not an object", b"[1, 2, 3]", 400, None),
    ("wrong type", {**GOOD, "max_tokens": "5"}, 400, "max_tokens"),
    ("bool as int", {**GOOD, "n": True}, 400, "n"),
    ("prompt of floats", {**GOOD, "prompt": [1.5, 2.0]}, 400, "prompt"),
    ("unknown model", {**GOOD, "model": "gpt-4"}, 404, "model"),
    ("negative max_tokens", {**GOOD, "max_tokens": -1}, 400, "max_tokens"),
    ("huge n", {**GOOD, "n": 10**6}, 400, "n"),
    ("negative temperature", {**GOOD, "temperature": -0.5}, 400, "temperature"),
    ("top_p out of range", {**GOOD, "top_p": 1.5}, 400, "top_p"),
    ("token id outside vocab", {**GOOD, "prompt": [1, 99999]}, 400, "prompt"),
    ("empty prompt", {**GOOD, "prompt": []}, 400, "prompt"),
    ("prompt longer than context", {**GOOD, "prompt": [5] * 3000}, 400, "prompt"),
    ("output beyond context", {**GOOD, "prompt": [5] * 2000, "max_tokens": 100}, 400, "max_tokens"),
    ("missing model", {"prompt": [1]}, 400, "model"),
    ("unsupported echo", {**GOOD, "echo": True}, 400, "echo"),
    ("oversized body", {**GOOD, "user": "x" * (5 * 2**20)}, 413, None),
]


@pytest.mark.parametrize("body,status,param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_one_clear_error_and_the_server_keeps_serving(server, body, status, param):
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert err["param"] == param
    ok = post(server, GOOD)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 3


def test_bad_chat_input(server):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert post(server, chat, "/v1/chat/completions").status_code == 200
    bad = {**chat, "messages": [{"role": "robot", "content": "hi"}]}
    r = post(server, bad, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"
    r = post(server, {**chat, "messages": []}, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    long = {**chat, "messages": [{"role": "user", "content": "hello " * 3000}]}
    r = post(server, long, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[1, 2], max_tokens=-3)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=[1, 2], max_tokens=3)
    with pytest.raises(openai.NotFoundError):  # an unknown route: OpenAI's error body too
        client.get("/nowhere", cast_to=object)


def free_blocks(server):
    return server.engine.workers[0].engine.scheduler.kv.num_free_blocks


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_aborts_and_frees_kv(server, stream):
    start = free_blocks(server)
    aborted = server.cfg.metrics.finished["abort"]
    body = json.dumps({**GOOD, "prompt": list(range(3, 200)), "max_tokens": 1800, "stream": stream})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        if stream:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: free_blocks(server) < start)  # running, holding KV
    # the client left mid-request: the request is aborted and its blocks come back
    wait_until(lambda: server.engine.num_outstanding == 0 and free_blocks(server) == start)
    assert server.cfg.metrics.finished["abort"] == aborted + 1


def test_full_queue_gives_429_with_retry_after(start_server):
    with start_server(engine={"max_num_seqs": 1}, max_queue=1) as s:
        long = {**GOOD, "max_tokens": 1500, "stream": True}
        with httpx.Client(timeout=30) as c, c.stream("POST", f"{s.url}/v1/completions", json=long):
            with c.stream("POST", f"{s.url}/v1/completions", json=long):
                wait_until(lambda: s.engine.num_outstanding == 2)
                r = post(s, GOOD)
                assert r.status_code == 429
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
                with pytest.raises(openai.RateLimitError):
                    client_for(s).completions.create(model=MODEL, prompt=[1, 2], max_tokens=2)
        wait_until(lambda: s.engine.num_outstanding == 0)
        assert post(s, GOOD).status_code == 200  # room again


def test_request_timeout(start_server):
    with start_server(request_timeout_s=0.3) as s:
        r = post(s, {**GOOD, "max_tokens": 1900})
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
        events = [
            line
            for line in post(s, {**GOOD, "max_tokens": 1900, "stream": True}).text.splitlines()
            if line.startswith("data:")
        ]
        assert json.loads(events[-2][5:])["error"]["code"] == "timeout"
        assert events[-1] == "data: [DONE]"
        wait_until(lambda: s.engine.num_outstanding == 0)
        assert post(s, GOOD).status_code == 200


def test_api_key(start_server):
    with start_server(api_key="s3cret") as s:
        with pytest.raises(openai.AuthenticationError):
            client_for(s).completions.create(model=MODEL, prompt=[1], max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            client_for(s, api_key="wrong").models.list()
        ok = client_for(s, api_key="s3cret").completions.create(
            model=MODEL, prompt=[1], max_tokens=1
        )
        assert len(ok.choices) == 1
        assert httpx.get(f"{s.url}/health").status_code == 200  # probes need no key


def test_engine_failure_fails_requests_and_health(start_server):
    with start_server() as s:
        worker = s.engine.workers[0]

        def broken():
            raise RuntimeError("simulated device error")

        worker.step = broken
        r = post(s, GOOD)
        assert r.status_code == 500 and "simulated device error" in r.json()["error"]["message"]
        assert httpx.get(f"{s.url}/health").status_code == 503
        assert post(s, GOOD).status_code == 503  # no new requests into a dead engine


def test_shutdown_finishes_short_requests_and_fails_long_ones_cleanly(start_server):
    """With a 1 s grace: a short request in flight completes; a long one ends with an error
    event (code "shutdown") and [DONE], not a cut connection."""
    with start_server(shutdown_grace_s=1.0) as s:
        results = {}

        def long_stream():
            body = {**GOOD, "max_tokens": 1900, "stream": True}
            with httpx.Client(timeout=30) as c:
                r = c.post(f"{s.url}/v1/completions", json=body)
            results["long"] = [ln for ln in r.text.splitlines() if ln.startswith("data:")]

        def short():
            results["short"] = post(s, {**GOOD, "max_tokens": 20})

        t_long = threading.Thread(target=long_stream)
        t_long.start()
        wait_until(lambda: s.engine.num_outstanding == 1)
        t_short = threading.Thread(target=short)
        t_short.start()
        wait_until(lambda: s.engine.num_outstanding == 2)
        s.stop()
        t_long.join(30)
        t_short.join(30)
        assert results["short"].status_code == 200
        assert len(results["short"].json()["choices"][0]["token_ids"]) == 20
        long = results["long"]
        assert json.loads(long[-2][5:])["error"]["code"] == "shutdown"
        assert long[-1] == "data: [DONE]"
        assert s.engine.num_outstanding == 0
        with pytest.raises(httpx.ConnectError):
            post(s, GOOD)


def metric(server, name):
    text = httpx.get(f"{server.url}/metrics").text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name)
    }


def test_metrics_in_prometheus_text(server):
    before = metric(server, "servelab_requests_finished_total")
    gen_before = metric(server, "servelab_generation_tokens_total")[
        "servelab_generation_tokens_total"
    ]
    assert post(server, {**GOOD, "max_tokens": 4}).status_code == 200
    assert post(server, {**GOOD, "n": 2, "max_tokens": 2}).status_code == 200
    after = metric(server, "servelab_requests_finished_total")
    key = 'servelab_requests_finished_total{reason="length"}'
    assert after[key] - before[key] == 3
    gen = metric(server, "servelab_generation_tokens_total")["servelab_generation_tokens_total"]
    assert gen - gen_before == 8
    text = httpx.get(f"{server.url}/metrics").text
    assert "# TYPE servelab_time_to_first_token_seconds histogram" in text
    assert 'servelab_time_to_first_token_seconds_bucket{le="+Inf"}' in text
    kv = metric(server, "servelab_kv_free_blocks")
    assert kv['servelab_kv_free_blocks{replica="0"}'] == free_blocks(server)


def test_mixed_faults_under_load_lose_no_request(start_server):
    """Good, streamed, disconnecting, timed-out and bad requests at once: every engine request
    that was admitted finishes exactly once, and the KV pool and the queue end where they began."""
    with start_server(request_timeout_s=1.0, engine={"max_num_seqs": 4}, max_queue=64) as s:
        start = free_blocks(s)
        base = sum(s.cfg.metrics.finished.values())
        statuses = []

        def good(i):
            statuses.append(post(s, {**GOOD, "prompt": [5 + i, 6, 7], "max_tokens": 8}).status_code)

        def timed_out(i):
            statuses.append(post(s, {**GOOD, "max_tokens": 1900}).status_code)

        def left(i):
            body = json.dumps({**GOOD, "max_tokens": 1500, "stream": True})
            with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
                sock.sendall(
                    f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: application/json\r\n\r\n{body}".encode()
                )
                sock.recv(1024)
            statuses.append("left")

        def bad(i):
            statuses.append(post(s, {**GOOD, "max_tokens": -1}).status_code)

        kinds = [good] * 8 + [timed_out] * 2 + [left] * 3 + [bad] * 3
        threads = [threading.Thread(target=k, args=(i,)) for i, k in enumerate(kinds)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(map(str, statuses)) == sorted(
            ["200"] * 8 + ["408"] * 2 + ["left"] * 3 + ["400"] * 3
        )
        wait_until(lambda: s.engine.num_outstanding == 0 and free_blocks(s) == start)
        finished = s.cfg.metrics.finished
        assert sum(finished.values()) - base == 13  # 8 completed + 2 timed out + 3 left
        assert (
            s.engine.workers[0].live == {}
            and not s.engine.workers[0].engine.has_unfinished_requests()
        )

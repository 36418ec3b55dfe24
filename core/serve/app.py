"""The OpenAI-compatible HTTP app (FastAPI) over an :class:`~core.serve.engine.AsyncEngine`.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (JSON, or server-sent events
with ``"stream": true``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``. Behaviour and
status codes are listed in docs/core/serve.md; in short: a bad request is one 400 naming the
field (413 for an oversized body, 404 for an unknown model, 401 for a wrong API key), a full
queue a 429 with ``Retry-After``, a request over its time limit a 408, a client that leaves
aborts its requests, and shutdown fails what it cannot finish with a 503.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from core.engine.sampling import SamplingParams

from .engine import ENGINE_FAILED, SHUTTING_DOWN, AsyncEngine, EngineDead, QueueFull, Update
from .metrics import Gauges, ServerMetrics
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_request
from .text import Detokenizer, StopStrings, TextCodec

__all__ = ["ServeConfig", "build_app"]


@dataclass
class ServeConfig:
    """What the app needs besides the engine.

    - ``model_name``: the name clients pass as ``model`` (``/v1/models`` lists it);
    - ``max_model_len``, ``vocab_size``: prompt + output limit and the token-id range;
    - ``codec``: the tokenizer and chat template (None: token-id prompts only, no chat);
    - ``api_key``: when set, ``/v1/*`` needs ``Authorization: Bearer <key>``;
    - ``max_choices``: the most sequences one request may ask for (``n`` times prompts);
    - ``max_body_bytes``: larger bodies get 413;
    - ``request_timeout_s``: a request still running after this long is aborted (408);
    - ``retry_after_s``: the ``Retry-After`` of a 429;
    - ``shutdown_grace_s``: how long shutdown lets requests in flight finish.
    """

    model_name: str
    max_model_len: int
    vocab_size: int
    codec: TextCodec | None = None
    api_key: str | None = None
    max_choices: int = 16
    max_body_bytes: int = 4 * 2**20
    request_timeout_s: float | None = None
    retry_after_s: int = 1
    shutdown_grace_s: float = 30.0
    metrics: ServerMetrics = field(default_factory=ServerMetrics)


STOP_STRING = "stop string"  # the abort reason of a request a stop string ended

# -- one HTTP request's engine requests ------------------------------------------------------


@dataclass
class _Choice:
    index: int
    request_id: str
    detok: Detokenizer
    stops: StopStrings
    token_ids: list[int] = field(default_factory=list)
    sent_chars: int = 0
    finish_reason: str | None = None
    cached_tokens: int = 0  # prompt tokens the prefix cache held when it was admitted


@dataclass
class _Event:
    """What one update means to the client: text and tokens to send, maybe a finish."""

    choice: _Choice
    text: str
    token_ids: list[int]
    finish_reason: str | None


class _Job:
    """The engine requests of one HTTP request (``n`` per prompt), their updates on one queue.

    :meth:`events` yields what to send as it comes; it raises :class:`ApiError` when a request
    fails (408 timeout, 503 shutdown, 500 engine failure). Every engine request not finished
    when the job ends is aborted (:meth:`close`).
    """

    def __init__(
        self,
        app_state: _State,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        n: int,
        stops: Sequence[str],
        prefix: str,
    ) -> None:
        self.state = app_state
        self.engine = app_state.engine
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.n = n
        self.queue: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        self.choices: list[_Choice] = []
        self.open: set[int] = set()
        k = len(prompts) * n
        if self.engine.free_slots < k:
            raise QueueFull(
                f"the server is at its limit of {self.engine.max_outstanding} requests in flight"
            )
        codec = app_state.cfg.codec
        for i, prompt in enumerate(prompts):
            for j in range(n):
                index = i * n + j
                sp = params
                if j and params.seed is not None:  # n samples of one seeded request differ
                    sp = replace(params, seed=(params.seed + j) % 2**64)
                rid = f"{self.id}-{index}"
                self.engine.submit(rid, prompt, sp, self.queue, index)
                self.choices.append(_Choice(index, rid, Detokenizer(codec), StopStrings(stops)))
                self.open.add(index)

    def close(self, reason: str = "aborted") -> None:
        for index in list(self.open):
            self.engine.abort(self.choices[index].request_id, reason)
        self.open.clear()

    async def events(self, deadline: float | None) -> AsyncIterator[_Event]:
        while self.open:
            if deadline is None:
                index, update = await self.queue.get()
            else:
                try:
                    index, update = await asyncio.wait_for(
                        self.queue.get(), max(0.0, deadline - time.monotonic())
                    )
                except asyncio.TimeoutError:
                    self.close("timed out")
                    limit = self.state.cfg.request_timeout_s
                    raise ApiError(
                        408,
                        f"the request did not finish within the server's limit of {limit:g} s",
                        type="timeout_error",
                        code="timeout",
                    ) from None
            if index not in self.open:
                continue  # tokens after a stop string, or its abort
            event = self._advance(self.choices[index], update)
            if event.finish_reason is not None:
                self.open.discard(index)
            yield event

    def _advance(self, c: _Choice, u: Update) -> _Event:
        c.token_ids += u.token_ids
        text = c.detok.add(u.token_ids, final=u.finished)
        upto = c.stops.feed(text, final=u.finished)
        piece = text[c.sent_chars : upto]
        c.sent_chars = max(c.sent_chars, upto)
        if c.stops.hit:
            c.finish_reason = "stop"
            if not u.finished:
                self.engine.abort(c.request_id, STOP_STRING)
        elif u.finished:
            if u.finish_reason in ("abort", "error"):
                self.close(u.error or u.finish_reason)
                raise _failure(u)
            c.finish_reason = u.finish_reason
            c.cached_tokens = min(u.num_cached_tokens, u.num_prompt_tokens)
        return _Event(c, piece, list(u.token_ids), c.finish_reason)

    def usage(self) -> dict[str, Any]:
        """OpenAI's usage; a prompt counts once however many samples (``n``) it has."""
        out = sum(len(c.token_ids) for c in self.choices)
        cached = sum(c.cached_tokens for c in self.choices if c.index % self.n == 0)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": out,
            "total_tokens": self.prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def _failure(u: Update) -> ApiError:
    why = u.error or u.finish_reason or "unknown"
    if why == SHUTTING_DOWN:
        return ApiError(503, f"request not finished: {why}", type="server_error", code="shutdown")
    if u.finish_reason == "error" and why.startswith(ENGINE_FAILED):
        return ApiError(500, why, type="server_error", code="engine_failed")
    if u.finish_reason == "error":
        return ApiError(400, f"the engine rejected the request: {why}")
    return ApiError(499, f"request aborted: {why}", type="server_error", code="aborted")


# -- request -> engine requests ---------------------------------------------------------------


@dataclass
class _State:
    engine: AsyncEngine
    cfg: ServeConfig


def _check_model(cfg: ServeConfig, name: str) -> None:
    if name != cfg.model_name:
        raise ApiError(
            404,
            f"model {name!r} does not exist; this server serves {cfg.model_name!r}",
            param="model",
            code="model_not_found",
        )


def _check_prompt(cfg: ServeConfig, ids: list[int], param: str) -> None:
    if not ids:
        raise ApiError(400, f"{param} is empty", param=param)
    bad = next((t for t in ids if t >= cfg.vocab_size), None)
    if bad is not None:
        raise ApiError(
            400,
            f"{param} holds token id {bad}, outside the model's vocabulary of {cfg.vocab_size}",
            param=param,
        )
    if len(ids) >= cfg.max_model_len:
        raise ApiError(
            400,
            f"{param} has {len(ids)} tokens; this model's context is {cfg.max_model_len} tokens "
            "(prompt and output together)",
            param=param,
            code="context_length_exceeded",
        )


def _max_tokens(cfg: ServeConfig, prompts: Sequence[list[int]], asked: int | None) -> int:
    longest = max(len(p) for p in prompts)
    room = cfg.max_model_len - longest
    if asked is None:
        return room
    if asked > room:
        raise ApiError(
            400,
            f"max_tokens={asked} with a prompt of {longest} tokens exceeds this model's context "
            f"of {cfg.max_model_len} tokens (at most {room} output tokens fit)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return asked


def _sampling(req: CompletionRequest | ChatCompletionRequest, max_tokens: int) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            max_tokens=max_tokens,
            min_tokens=min(req.min_tokens, max_tokens),
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            seed=req.seed,
        )
    except ValueError as exc:  # the message names the field and the value
        field_name = str(exc).split(" ", 1)[0]
        raise ApiError(400, str(exc), param=field_name) from None


def _check_choices(cfg: ServeConfig, n: int, num_prompts: int, stops: Sequence[str]) -> None:
    if n * num_prompts > cfg.max_choices:
        raise ApiError(
            400,
            f"n={n} for {num_prompts} prompt(s) asks for {n * num_prompts} sequences; this "
            f"server returns at most {cfg.max_choices} per request",
            param="n",
        )
    if stops and cfg.codec is None:
        raise ApiError(
            400, "stop strings need a model with a tokenizer; use stop_token_ids", param="stop"
        )


def _completion_prompts(cfg: ServeConfig, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        items = [prompt]
    else:
        items = list(prompt) if prompt else [prompt]
    out = []
    for k, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt.{k}"
        if isinstance(item, str):
            if cfg.codec is None:
                raise ApiError(
                    400,
                    "this model has no tokenizer: send prompt as a list of token ids",
                    param="prompt",
                )
            ids = cfg.codec.encode(item)
        else:
            ids = [int(t) for t in item]
        _check_prompt(cfg, ids, param)
        out.append(ids)
    return out


def _chat_prompt(cfg: ServeConfig, req: ChatCompletionRequest) -> list[int]:
    if cfg.codec is None:
        raise ApiError(
            400,
            "this model has no tokenizer, so no chat template: use /v1/completions with token ids",
            param="messages",
        )
    messages = [
        {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
        for m in req.messages
    ]
    try:
        text = cfg.codec.render_chat(messages)
    except Exception as exc:  # noqa: BLE001 - a template's own raise_exception, or a bad template
        raise ApiError(
            400, f"the chat template rejected the messages: {exc}", param="messages"
        ) from None
    ids = cfg.codec.encode(text)
    _check_prompt(cfg, ids, "messages")
    return ids


# -- responses ---------------------------------------------------------------------------------


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _abort_on_disconnect(request: Request, job: _Job) -> None:
    """Wait for the client to leave (``http.disconnect``), then abort the job's requests."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.close("client disconnected")
            return


def _chunk(
    job: _Job, obj: str, events: Sequence[_Event], content: Callable[[_Event], dict[str, Any]]
) -> dict[str, Any]:
    """One response object (a stream chunk, or the head of a whole answer) with a choice per
    event; ``content(event)`` gives the choice's text field (``text`` or ``delta``)."""
    return {
        "id": job.id,
        "object": obj,
        "created": job.created,
        "model": job.state.cfg.model_name,
        "choices": [
            {
                "index": e.choice.index,
                **content(e),
                "logprobs": None,
                "finish_reason": e.finish_reason,
                "token_ids": e.token_ids,
            }
            for e in events
        ],
    }


def _final_response(
    job: _Job, head: dict[str, Any], content: Callable[[str], dict[str, Any]]
) -> JSONResponse:
    """The non-streamed answer: ``head`` with every choice (``content(text)`` holds its text)
    and the usage."""
    choices = [
        {
            "index": c.index,
            **content(c.detok.text[: c.sent_chars]),
            "logprobs": None,
            "finish_reason": c.finish_reason,
            "token_ids": c.token_ids,
        }
        for c in job.choices
    ]
    return JSONResponse({**head, "choices": choices, "usage": job.usage()})


class _Api:
    """The route bodies; one per app."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.cfg = state.cfg

    def _authorize(self, request: Request) -> None:
        """With an API key set, ``Authorization: Bearer <key>`` must match (constant time)."""
        key = self.cfg.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not (
            scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
        ):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer <key>)",
                type="authentication_error",
                code="invalid_api_key",
            )

    def _deadline(self) -> float | None:
        t = self.cfg.request_timeout_s
        return None if t is None else time.monotonic() + t

    async def completions(self, request: Request) -> Response:
        cfg = self.cfg
        self._authorize(request)
        req = parse_request(CompletionRequest, await _read_body(request, cfg.max_body_bytes))
        _check_model(cfg, req.model)
        prompts = _completion_prompts(cfg, req.prompt)
        _check_choices(cfg, req.n, len(prompts), req.stop_strings())
        params = _sampling(req, _max_tokens(cfg, prompts, req.max_tokens))
        job = self._job(prompts, params, req.n, req.stop_strings(), "cmpl")

        def chunk(events: Sequence[_Event]) -> dict[str, Any]:
            return _chunk(job, "text_completion", events, lambda e: {"text": e.text})

        if req.stream:
            return self._stream(request, job, chunk, None, req.include_usage())
        await self._collect(request, job)
        return _final_response(job, chunk([]), lambda text: {"text": text})

    async def chat(self, request: Request) -> Response:
        cfg = self.cfg
        self._authorize(request)
        req = parse_request(ChatCompletionRequest, await _read_body(request, cfg.max_body_bytes))
        _check_model(cfg, req.model)
        _check_choices(cfg, req.n, 1, req.stop_strings())
        prompt = _chat_prompt(cfg, req)
        params = _sampling(req, _max_tokens(cfg, [prompt], req.max_new_tokens()))
        job = self._job([prompt], params, req.n, req.stop_strings(), "chatcmpl")

        def delta(e: _Event) -> dict[str, Any]:
            return {"delta": {"content": e.text} if e.text or not e.finish_reason else {}}

        def chunk(events: Sequence[_Event]) -> dict[str, Any]:
            return _chunk(job, "chat.completion.chunk", events, delta)

        def first() -> dict[str, Any]:
            body = chunk([])
            body["choices"] = [
                {
                    "index": c.index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for c in job.choices
            ]
            return body

        if req.stream:
            return self._stream(request, job, chunk, first, req.include_usage())
        await self._collect(request, job)
        head = {**chunk([]), "object": "chat.completion"}
        return _final_response(
            job, head, lambda text: {"message": {"role": "assistant", "content": text}}
        )

    def _job(
        self,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        n: int,
        stops: Sequence[str],
        prefix: str,
    ) -> _Job:
        try:
            return _Job(self.state, prompts, params, n, stops, prefix)
        except QueueFull as exc:
            raise ApiError(
                429,
                f"{exc}; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            ) from None
        except EngineDead as exc:
            raise ApiError(503, str(exc), type="server_error", code="unavailable") from None

    async def _collect(self, request: Request, job: _Job) -> None:
        watcher = asyncio.create_task(_abort_on_disconnect(request, job))
        try:
            async for _ in job.events(self._deadline()):
                pass
        finally:
            watcher.cancel()
            job.close()

    def _stream(
        self,
        request: Request,
        job: _Job,
        chunk: Callable[[Sequence[_Event]], dict[str, Any]],
        first: Callable[[], dict[str, Any]] | None,
        include_usage: bool,
    ) -> StreamingResponse:
        deadline = self._deadline()
        metrics = self.cfg.metrics

        async def body() -> AsyncIterator[str]:
            watcher = asyncio.create_task(_abort_on_disconnect(request, job))
            try:
                if first is not None:
                    yield _sse(first())
                try:
                    async for event in job.events(deadline):
                        if event.text or event.token_ids or event.finish_reason:
                            yield _sse(chunk([event]))
                except ApiError as exc:
                    metrics.http_errors[exc.status] += 1
                    yield _sse(exc.body())
                    yield "data: [DONE]\n\n"
                    return
                if include_usage:
                    usage = chunk([])
                    usage["choices"] = []
                    usage["usage"] = job.usage()
                    yield _sse(usage)
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()
                job.close("client disconnected")

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": self.cfg.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "servelab",
                    "max_model_len": self.cfg.max_model_len,
                }
            ],
        }

    async def health(self) -> Response:
        engine = self.state.engine
        if engine.error is not None:
            return JSONResponse({"status": "failed", "error": engine.error}, status_code=503)
        if engine.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(self) -> Response:
        engine = self.state.engine
        kv = [(str(w.index), *w.kv_stats()) for w in engine.workers]
        gauges: Gauges = {
            "servelab_requests_outstanding": (
                "Requests in flight (running or queued).",
                [({}, float(engine.num_outstanding))],
            ),
            "servelab_queue_capacity": (
                "Requests the server takes at once.",
                [({}, float(engine.max_outstanding))],
            ),
            "servelab_kv_cache_usage": (
                "Share of KV blocks in use, per replica.",
                [({"replica": i}, usage) for i, usage, _ in kv],
            ),
            "servelab_kv_free_blocks": (
                "Free KV blocks, per replica.",
                [({"replica": i}, float(free)) for i, _, free in kv],
            ),
            "servelab_engine_steps": ("Engine steps so far.", [({}, float(engine.stats["steps"]))]),
            "servelab_engine_busy_seconds": (
                "Seconds spent in engine steps.",
                [({}, float(engine.stats["busy_s"]))],
            ),
        }
        return PlainTextResponse(
            self.cfg.metrics.render(gauges), media_type="text/plain; version=0.0.4"
        )


def build_app(engine: AsyncEngine, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app; starting it (its lifespan) starts ``engine``'s thread, stopping it
    shuts the engine down (see :meth:`AsyncEngine.shutdown`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.shutdown(cfg.shutdown_grace_s)

    def finished(u: Update) -> None:
        reason = (
            "stop" if u.finish_reason == "abort" and u.error == STOP_STRING else u.finish_reason
        )
        cfg.metrics.request_done(
            reason or "error", u.num_prompt_tokens, u.num_output_tokens, u.timeline
        )

    engine.on_finished = finished
    app = FastAPI(
        title="servelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    state = _State(engine, cfg)
    app.state.serve = state
    api = _Api(state)

    def error_response(exc: ApiError) -> JSONResponse:
        cfg.metrics.http_errors[exc.status] += 1
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(
            ApiError(exc.status_code, str(exc.detail), type="invalid_request_error")
        )

    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/metrics", api.metrics, methods=["GET"])
    return app

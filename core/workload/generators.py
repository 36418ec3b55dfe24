"""Seeded synthetic workloads with real token ids.

Three shapes that the serving papers study, each a small parameter dataclass and a function
``generate_*(params, seed) -> Workload``. The same parameters and seed always give the same
workload (token ids included); defaults are realistic sizes, and every size knob scales down
for tests.

- :func:`generate_shared_prefix`: a tree of prompt segments (system prompts -> few-shot
  examples -> documents); each request follows a Zipf-popular root-to-leaf path and appends a
  unique suffix (prefix caching, prefix-aware routing).
- :func:`generate_chat_sessions`: multi-turn chats; turn k's prompt is the whole history
  (earlier prompts and reference responses) plus a new user input (session-aware caching).
- :func:`generate_agentic_sessions`: agents with long growing contexts: many steps, each a
  short action followed by a long tool observation, optionally folded into one request per
  session with interceptions (InferCept-style pause/resume).

Lengths are lognormal with a given mean and coefficient of variation (``cv=0`` makes them
constant); think times and tool durations are exponential with a given mean. Arrival times
for turns after the first are open-loop lower bounds (previous arrival + think time).

The building blocks are public for the papers' own generators (in their artifacts):
:func:`lognormal_lengths`, :func:`zipf_weights`, :func:`random_tokens` (ids from
``N_SPECIAL`` up) and :func:`jsonable_params`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from core.workload.arrivals import PoissonProcess
from core.workload.schema import Request, Workload
from core.workload.transforms import sessions_to_interceptions

N_SPECIAL = 4  # ids below this are reserved, as in HashTokenizer

# Tags keep the independent random streams of one seed apart.
_NODE_STREAM = 0x7E1  # shared-prefix tree segments
_SYSTEM_STREAM = 0x5E5  # chat system prompt
_AGENT_STREAM = 0xA6E  # agent tool prompts


def lognormal_lengths(
    rng: np.random.Generator, mean: float, cv: float, n: int, minimum: int = 1
) -> np.ndarray:
    """``n`` integer lengths, lognormal with the given mean and CV, rounded, at least ``minimum``.

    Rounding and the floor bias the mean by well under 1% for means >= 16 and cv <= 2.
    """
    if mean <= 0 or cv < 0:
        raise ValueError(f"length mean must be > 0 and cv >= 0, got mean={mean}, cv={cv}")
    if cv == 0:
        return np.full(n, max(minimum, round(mean)), dtype=np.int64)
    sigma2 = math.log1p(cv * cv)
    x = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
    return np.maximum(minimum, np.rint(x)).astype(np.int64)


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Probabilities proportional to ``rank ** -s`` for ranks 1..n (``s=0`` is uniform)."""
    if n < 1:
        raise ValueError(f"need at least one item, got {n}")
    w = np.arange(1, n + 1, dtype=float) ** -float(s)
    return w / w.sum()


def random_tokens(rng: np.random.Generator, n: int, vocab_size: int) -> list[int]:
    """``n`` token ids uniform in ``[N_SPECIAL, vocab_size)``."""
    return rng.integers(N_SPECIAL, vocab_size, size=int(n)).tolist()


def jsonable_params(params: Any) -> dict[str, Any]:
    """A generator's params dataclass as a ``Workload.params`` dict; tuples become lists so the
    params survive a JSONL round trip unchanged."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}


def _check_positive(**values: float | int | None) -> None:
    for key, v in values.items():
        if v is not None and not v > 0:
            raise ValueError(f"{key} must be > 0, got {v}")


# --------------------------------------------------------------------------- shared prefixes


@dataclass(frozen=True)
class SharedPrefixParams:
    """A tree of shared prompt segments with Zipf popularity.

    ``fanout[l]`` children per node at level ``l`` and ``segment_lens[l]`` tokens per node
    there; the defaults are 4 system prompts (256 tokens) x 4 few-shot sets (512) x 8
    documents (1024): 128 leaves, 1,792-token shared prefixes. ``popularity="leaves"`` ranks
    the leaves in a seeded random order and picks a leaf with probability ~ rank^-zipf_s;
    ``"children"`` picks each level's child with probability ~ (child index + 1)^-zipf_s.
    Every request appends a unique suffix and generates ``output_len`` tokens; arrivals are
    Poisson at ``arrival_rate`` per second (``None``: all at 0).
    """

    num_requests: int = 1000
    fanout: tuple[int, ...] = (4, 4, 8)
    segment_lens: tuple[int, ...] = (256, 512, 1024)
    zipf_s: float = 1.0
    popularity: Literal["leaves", "children"] = "leaves"
    suffix_len_mean: float = 64.0
    suffix_len_cv: float = 0.5
    output_len_mean: float = 128.0
    output_len_cv: float = 0.5
    arrival_rate: float | None = 10.0
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        if len(self.fanout) != len(self.segment_lens) or not self.fanout:
            raise ValueError("fanout and segment_lens need the same, non-zero length")
        if any(f < 1 for f in self.fanout) or any(s < 0 for s in self.segment_lens):
            raise ValueError("fanout must be >= 1 and segment_lens >= 0 at every level")
        if self.popularity not in ("leaves", "children"):
            raise ValueError(f"popularity must be 'leaves' or 'children', got {self.popularity!r}")
        if self.num_requests < 0 or self.zipf_s < 0:
            raise ValueError("num_requests and zipf_s must be >= 0")
        _check_positive(arrival_rate=self.arrival_rate, vocab_size=self.vocab_size - N_SPECIAL)

    @property
    def num_leaves(self) -> int:
        return math.prod(self.fanout)


def generate_shared_prefix(
    params: SharedPrefixParams = SharedPrefixParams(), seed: int = 0, *, name: str = "prefix"
) -> Workload:
    """Requests over a Zipf-popular tree of shared prefixes; see :class:`SharedPrefixParams`.

    Metadata per request: ``path`` (child index per level), ``leaf`` (flat leaf index),
    ``leaf_rank`` (1 = most popular; None with ``popularity="children"``), ``prefix_len``.
    Request ids are ``"<name>:<i>"`` in arrival order.
    """
    p = params
    rng = np.random.default_rng(seed)
    n, n_leaves = p.num_requests, p.num_leaves
    leaf_rank: np.ndarray | None = None
    if p.popularity == "leaves":
        leaf_of_rank = rng.permutation(n_leaves)
        picked = rng.choice(n_leaves, size=n, p=zipf_weights(n_leaves, p.zipf_s))
        leaves = leaf_of_rank[picked]
        leaf_rank = picked + 1
        paths = np.stack(np.unravel_index(leaves, p.fanout), axis=1) if n else np.zeros((0, 0))
    else:
        cols = [rng.choice(f, size=n, p=zipf_weights(f, p.zipf_s)) for f in p.fanout]
        paths = np.stack(cols, axis=1)
        leaves = np.ravel_multi_index(tuple(cols), p.fanout) if n else np.zeros(0, dtype=int)
    suffix_lens = lognormal_lengths(rng, p.suffix_len_mean, p.suffix_len_cv, n)
    output_lens = lognormal_lengths(rng, p.output_len_mean, p.output_len_cv, n)
    arrivals = PoissonProcess(p.arrival_rate).times(n, rng) if p.arrival_rate else np.zeros(n)

    # A node's tokens depend only on (seed, level, node index): large trees stay cheap because
    # only visited nodes are generated, and the tree is the same whatever the request count.
    segments: dict[tuple[int, int], list[int]] = {}

    def segment(level: int, path: tuple[int, ...]) -> list[int]:
        index = int(np.ravel_multi_index(path, p.fanout[: level + 1]))
        key = (level, index)
        if key not in segments:
            node_rng = np.random.default_rng([seed, _NODE_STREAM, level, index])
            segments[key] = random_tokens(node_rng, p.segment_lens[level], p.vocab_size)
        return segments[key]

    requests = []
    prefix_len = sum(p.segment_lens)
    for i in range(n):
        path = tuple(int(c) for c in paths[i])
        prompt: list[int] = []
        for level in range(len(p.fanout)):
            prompt += segment(level, path[: level + 1])
        prompt += random_tokens(rng, suffix_lens[i], p.vocab_size)
        requests.append(
            Request(
                request_id=f"{name}:{i}",
                arrival_time=float(arrivals[i]),
                prompt_len=len(prompt),
                output_len=int(output_lens[i]),
                prompt_token_ids=prompt,
                metadata={
                    "path": list(path),
                    "leaf": int(leaves[i]),
                    "leaf_rank": int(leaf_rank[i]) if leaf_rank is not None else None,
                    "prefix_len": prefix_len,
                },
            )
        )
    return Workload(
        name=f"{name}(seed={seed})",
        requests=requests,
        sources=["generator:shared_prefix"],
        params={**jsonable_params(p), "seed": seed},
    )


# --------------------------------------------------------------------------- chat sessions


@dataclass(frozen=True)
class ChatSessionParams:
    """Multi-turn chat sessions.

    Turns per session are geometric with mean ``turns_mean`` (at least 1, at most
    ``max_turns``). Each turn adds a user input (lognormal, mean ``input_len_mean``) and gets
    a reference response (lognormal, mean ``output_len_mean``); the user thinks an
    exponential ``think_time_mean_s`` before the next turn. Every session starts with the same
    ``system_prompt_len``-token system prompt. Session starts are Poisson at ``session_rate``
    per second (``None``: all at 0). With ``max_prompt_len``, a session ends before a turn
    whose prompt would be longer (a first turn is cut to fit instead).
    """

    num_sessions: int = 100
    turns_mean: float = 4.0
    max_turns: int = 32
    system_prompt_len: int = 0
    input_len_mean: float = 64.0
    input_len_cv: float = 1.0
    output_len_mean: float = 192.0
    output_len_cv: float = 1.0
    think_time_mean_s: float = 10.0
    session_rate: float | None = 1.0
    max_prompt_len: int | None = None
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        if self.num_sessions < 0 or self.system_prompt_len < 0 or self.think_time_mean_s < 0:
            raise ValueError("num_sessions, system_prompt_len and think_time_mean_s must be >= 0")
        if not self.turns_mean >= 1 or self.max_turns < 1:
            raise ValueError("turns_mean and max_turns must be >= 1")
        if self.max_prompt_len is not None and self.max_prompt_len <= self.system_prompt_len:
            raise ValueError("max_prompt_len must exceed system_prompt_len")
        _check_positive(session_rate=self.session_rate, vocab_size=self.vocab_size - N_SPECIAL)


def generate_chat_sessions(
    params: ChatSessionParams = ChatSessionParams(), seed: int = 0, *, name: str = "chat"
) -> Workload:
    """Multi-turn chat sessions; see :class:`ChatSessionParams`.

    Turn k of session s is request ``"<name>:s<s>:t<k>"`` with ``session_id="<name>:s<s>"``;
    its prompt is turn k-1's prompt + turn k-1's ``output_token_ids`` + the new user input,
    and its ``think_time_s`` is the pause before it (0 for turn 0). Metadata: ``user_tokens``.
    """
    p = params
    rng = np.random.default_rng(seed)
    ns = p.num_sessions
    turns = np.minimum(rng.geometric(1.0 / p.turns_mean, size=ns), p.max_turns)
    starts = PoissonProcess(p.session_rate).times(ns, rng) if p.session_rate else np.zeros(ns)
    system = random_tokens(
        np.random.default_rng([seed, _SYSTEM_STREAM]), p.system_prompt_len, p.vocab_size
    )
    requests = []
    for s in range(ns):
        k_total = int(turns[s])
        user_lens = lognormal_lengths(rng, p.input_len_mean, p.input_len_cv, k_total)
        out_lens = lognormal_lengths(rng, p.output_len_mean, p.output_len_cv, k_total)
        thinks = (
            rng.exponential(p.think_time_mean_s, size=k_total)
            if p.think_time_mean_s
            else np.zeros(k_total)
        )
        history = list(system)
        t = float(starts[s])
        for k in range(k_total):
            n_user = int(user_lens[k])
            if p.max_prompt_len is not None and len(history) + n_user > p.max_prompt_len:
                if k > 0:
                    break
                n_user = p.max_prompt_len - len(history)
            think = float(thinks[k]) if k else 0.0
            t += think
            prompt = history + random_tokens(rng, n_user, p.vocab_size)
            output = random_tokens(rng, out_lens[k], p.vocab_size)
            requests.append(
                Request(
                    request_id=f"{name}:s{s}:t{k}",
                    arrival_time=t,
                    prompt_len=len(prompt),
                    output_len=len(output),
                    prompt_token_ids=prompt,
                    output_token_ids=output,
                    session_id=f"{name}:s{s}",
                    turn=k,
                    think_time_s=think,
                    metadata={"user_tokens": n_user},
                )
            )
            history = prompt + output
    return Workload(
        name=f"{name}(seed={seed})",
        requests=requests,
        sources=["generator:chat_sessions"],
        params={**jsonable_params(p), "seed": seed},
    )


# --------------------------------------------------------------------------- agentic sessions


@dataclass(frozen=True)
class AgenticParams:
    """Tool-using agents whose contexts grow to tens of thousands of tokens.

    A session starts with one of ``num_tool_prompts`` shared tool prompts
    (``tool_prompt_len`` tokens: system prompt + tool descriptions, chosen uniformly) and a
    task (lognormal, mean ``task_len_mean``). It runs 1 + Poisson(``steps_mean`` - 1) steps (at
    most ``max_steps``); each step is one LLM call producing a short action (lognormal, mean
    ``action_len_mean``) that calls one of ``num_tools`` tools (Zipf ``tool_zipf_s``
    popularity), which runs for an exponential ``tool_duration_mean_s`` and returns a long
    observation (lognormal, mean ``observation_len_mean``) appended to the context. The last
    step is the final answer and calls no tool. At the defaults a session ends near 27k
    tokens of context. With ``max_context_len``, a session ends before a step whose prompt +
    action would not fit. ``interceptions=True`` folds each session into one request that
    pauses for each tool call (see :func:`~core.workload.transforms.sessions_to_interceptions`).
    """

    num_sessions: int = 8
    steps_mean: float = 20.0
    max_steps: int = 64
    num_tool_prompts: int = 1
    tool_prompt_len: int = 2048
    task_len_mean: float = 200.0
    task_len_cv: float = 0.5
    action_len_mean: float = 48.0
    action_len_cv: float = 0.5
    observation_len_mean: float = 1200.0
    observation_len_cv: float = 1.0
    num_tools: int = 8
    tool_zipf_s: float = 1.0
    tool_duration_mean_s: float = 2.0
    session_rate: float | None = 0.05
    max_context_len: int | None = None
    interceptions: bool = False
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        if self.num_sessions < 0 or self.tool_prompt_len < 0 or self.tool_duration_mean_s < 0:
            raise ValueError("num_sessions, tool_prompt_len and tool_duration_mean_s must be >= 0")
        if not self.steps_mean >= 1 or self.max_steps < 1:
            raise ValueError("steps_mean and max_steps must be >= 1")
        if self.num_tools < 1 or self.num_tool_prompts < 1 or self.tool_zipf_s < 0:
            raise ValueError("num_tools and num_tool_prompts must be >= 1, tool_zipf_s >= 0")
        _check_positive(
            session_rate=self.session_rate,
            max_context_len=self.max_context_len,
            vocab_size=self.vocab_size - N_SPECIAL,
        )


def generate_agentic_sessions(
    params: AgenticParams = AgenticParams(), seed: int = 0, *, name: str = "agent"
) -> Workload:
    """Agent sessions with growing contexts; see :class:`AgenticParams`.

    Step k of session s is request ``"<name>:s<s>:t<k>"`` (``session_id="<name>:s<s>"``,
    ``turn=k``): its prompt is step k-1's prompt + action + observation, its output the
    action, its ``think_time_s`` the duration of the tool call that step k-1 made. Metadata:
    ``agent`` (tool prompt index), ``tool`` (called by this step's action; None on the last
    step), ``returned_tool`` / ``returned_tokens`` (the observation appended before this
    step). With ``interceptions=True`` each session is one request (id = session id) whose
    interceptions have ``kind`` = the tool name.
    """
    p = params
    rng = np.random.default_rng(seed)
    ns = p.num_sessions
    steps = np.minimum(1 + rng.poisson(p.steps_mean - 1, size=ns), p.max_steps)
    starts = PoissonProcess(p.session_rate).times(ns, rng) if p.session_rate else np.zeros(ns)
    agents = rng.integers(0, p.num_tool_prompts, size=ns)
    tool_probs = zipf_weights(p.num_tools, p.tool_zipf_s)
    tool_prompts: dict[int, list[int]] = {}
    requests = []
    for s in range(ns):
        a = int(agents[s])
        if a not in tool_prompts:
            tool_prompts[a] = random_tokens(
                np.random.default_rng([seed, _AGENT_STREAM, a]), p.tool_prompt_len, p.vocab_size
            )
        n_steps = int(steps[s])
        task_len = int(lognormal_lengths(rng, p.task_len_mean, p.task_len_cv, 1)[0])
        action_lens = lognormal_lengths(rng, p.action_len_mean, p.action_len_cv, n_steps)
        obs_lens = lognormal_lengths(rng, p.observation_len_mean, p.observation_len_cv, n_steps)
        tools = rng.choice(p.num_tools, size=n_steps, p=tool_probs)
        durations = (
            rng.exponential(p.tool_duration_mean_s, size=n_steps)
            if p.tool_duration_mean_s
            else np.zeros(n_steps)
        )
        context = tool_prompts[a] + random_tokens(rng, task_len, p.vocab_size)
        t = float(starts[s])
        think, returned_tool, returned = 0.0, None, 0
        for k in range(n_steps):
            last = k == n_steps - 1
            n_action = int(action_lens[k])
            if p.max_context_len is not None and len(context) + n_action > p.max_context_len:
                break
            t += think
            action = random_tokens(rng, n_action, p.vocab_size)
            tool = None if last else f"tool-{int(tools[k])}"
            requests.append(
                Request(
                    request_id=f"{name}:s{s}:t{k}",
                    arrival_time=t,
                    prompt_len=len(context),
                    output_len=n_action,
                    prompt_token_ids=context,
                    output_token_ids=action,
                    session_id=f"{name}:s{s}",
                    turn=k,
                    think_time_s=think,
                    metadata={
                        "agent": a,
                        "tool": tool,
                        "returned_tool": returned_tool,
                        "returned_tokens": returned,
                    },
                )
            )
            if last:
                break
            observation = random_tokens(rng, obs_lens[k], p.vocab_size)
            context = context + action + observation
            think, returned_tool, returned = float(durations[k]), tool, len(observation)
    workload = Workload(
        name=f"{name}(seed={seed})",
        requests=requests,
        sources=["generator:agentic_sessions"],
        params={**jsonable_params(p), "seed": seed},
    )
    if p.interceptions:
        workload = sessions_to_interceptions(
            workload, kind=lambda r: r.metadata["returned_tool"] or "tool"
        )
    return workload

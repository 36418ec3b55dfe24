"""Marconi's session workloads: LMSys-, ShareGPT- and SWE-bench-like generators.

A session is a list of requests (turns); turn k's prompt is the whole conversation so far plus
the new user input (chat) or tool observation (agent), so a prefix cache sees turn k-1's prompt
and response again at the front of turn k. The generators reproduce how the Marconi authors
(Pan et al., MLSys'25) built their traces, with synthetic token ids in place of the datasets
they tokenized, which we cannot download.

Where the numbers come from
---------------------------
"Authors' code" is ``utils/generate_trace.py`` of ruipeterpan/marconi (read, not copied; the
repository ignores its ``datasets/`` and ``traces/``, so no trace or dataset statistic is
shipped there). From it:

- chat (``generate_lmsys_trace``, ``generate_sharegpt_trace``): only conversations with >= 10
  turns (lmsys-chat-1m ``turn >= 10``; ShareGPT >= 20 messages); every turn is one request
  whose input is the token history + the new user message and whose output is the recorded
  response; the gap before turn k >= 1 is the user typing turn k's message:
  ``words / (90 / 60)`` seconds (words = spaces in the message, 90 words per minute); a
  session ends at the first turn that would pass 32,768 tokens (LMSys counts history + input
  + output, ShareGPT history + input). No system prompt: each message is tokenized on its own
  (a BOS and a few JSON-wrapper tokens, ~5-12 Llama-2 tokens, are the only tokens every
  session starts with).
- agent (``process_swebench_trace``, SWE-bench Verified trajectories of the
  ``20240820_honeycomb`` submission): request k's input is the history + observation k, its
  output action k; gaps are ``np.random.poisson(art)`` **integer** seconds, art = 5 / 7.5 / 10;
  a session ends at the first turn whose input passes 32,768 tokens or past turn id 50
  (so up to 51 requests; we follow the paper's "up to 50 turns"); after
  each request, once six (observation, action) pairs are intact, the observation of the 5th
  most recent turn is removed entirely. Net effect, which we reproduce: in request k the
  observations of turns 1..k-6 are gone, the task (turn 0) and the last 5 observations stay.
- sessions start ``i / sps`` seconds apart (``session_arrivals="uniform"``); the paper sweeps
  0.25-10 sessions/s with 100 sessions per trace. We default to Poisson starts at the same
  rate (``"poisson"``), as servelab's other generators do.

Per-turn lengths, turn counts and the SWE-bench trajectory shape are not in the repository;
each default below says where it comes from or that it is our assumption.

The authors' JSONL trace format (:func:`core.workload.load_marconi_jsonl`) and the summary of a
session workload (:func:`core.workload.session_stats`) are core's: any trace can be in them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from core.workload.arrivals import PoissonProcess
from core.workload.generators import N_SPECIAL, lognormal_lengths, random_tokens
from core.workload.schema import Request, Workload

__all__ = [
    "LMSYS_LIKE",
    "MARCONI_CONTEXT_LIMIT",
    "SHAREGPT_LIKE",
    "SWEBENCH_LIKE",
    "ChatTraceParams",
    "SWEAgentTraceParams",
    "generate_chat_trace",
    "generate_swe_agent_trace",
    "lmsys_like",
    "sharegpt_like",
    "swebench_like",
]

MARCONI_CONTEXT_LIMIT = 32768  # authors' code: sessions end past 32K tokens

# Tags keep the independent random streams of one seed apart; per-session streams make the
# first n sessions of a larger workload identical to a workload of n sessions.
_ARRIVAL_STREAM = 0x5E55
_CHAT_STREAM = 0xC4A7
_AGENT_STREAM = 0x5BE
_SYSTEM_STREAM = 0x5E5
_COLLAPSE_STREAM = 0xC011

SessionArrivals = Literal["poisson", "uniform"]


def _session_starts(n: int, rate: float, mode: SessionArrivals, seed: int) -> np.ndarray:
    if mode == "uniform":
        return np.arange(n, dtype=float) / rate
    return PoissonProcess(rate).times(n, np.random.default_rng([seed, _ARRIVAL_STREAM]))


def _check_common(
    num_sessions: int, session_rate: float, session_arrivals: str, vocab_size: int
) -> None:
    if num_sessions < 0:
        raise ValueError(f"num_sessions must be >= 0, got {num_sessions}")
    if not (session_rate > 0 and math.isfinite(session_rate)):
        raise ValueError(f"session_rate must be a finite number > 0, got {session_rate}")
    if session_arrivals not in ("poisson", "uniform"):
        raise ValueError(
            f"session_arrivals must be 'poisson' or 'uniform', got {session_arrivals!r}"
        )
    if vocab_size <= N_SPECIAL:
        raise ValueError(f"vocab_size must exceed {N_SPECIAL}, got {vocab_size}")


def _check_length(name: str, mean: float, cv: float) -> None:
    if not (mean > 0 and cv >= 0):
        raise ValueError(f"{name}: mean must be > 0 and cv >= 0, got mean={mean}, cv={cv}")


# --------------------------------------------------------------------------- chat sessions


@dataclass(frozen=True)
class ChatTraceParams:
    """Multi-turn chat sessions shaped like the Marconi authors' LMSys / ShareGPT traces.

    Contract:
    - a session plans ``turns_min + Geometric - 1`` turns (mean ``turns_mean``, at most
      ``turns_max``); turn k adds a user message (lognormal ``input_len_mean`` /
      ``input_len_cv`` tokens) and gets a reference response (lognormal ``output_len_mean`` /
      ``output_len_cv``); turn k's prompt is exactly turn k-1's prompt + response + the new
      message, after a ``system_prompt_len``-token prompt shared by every session (0: none,
      like the authors' traces);
    - the gap before turn k >= 1 is the user typing it: ``round(tokens * words_per_token)``
      words at ``words_per_minute``; turn 0 arrives at the session start (see
      ``session_arrivals``, ``session_rate`` per second);
    - the session ends before the first turn whose history + message (+ response when
      ``cap_counts_output``) exceeds ``max_context_len``; a session whose first turn does not
      fit has no requests (as in the authors' code).

    The defaults are the LMSys-like workload (:data:`LMSYS_LIKE`).
    """

    num_sessions: int = 100
    session_rate: float = 1.0
    session_arrivals: SessionArrivals = "poisson"
    # >= 10 turns: authors' code. Mean 17: our assumption, near the ~1.7k requests per 100
    # sessions (estimated from the file size) of a third-party rerun of the authors' LMSys
    # script with another tokenizer (meghrathod/marconi-repro, results/live-32K/lru/).
    turns_min: int = 10
    turns_mean: float = 17.0
    turns_max: int = 100
    # LMSYS-Chat-1M paper (Zheng et al., ICLR'24, Table 1): 69.5 tokens per prompt, 214.5 per
    # response over all conversations; using them per turn of >= 10-turn ones and the CVs
    # (heavy-tailed prompts: pasted text) are our assumption.
    input_len_mean: float = 69.5
    input_len_cv: float = 2.0
    output_len_mean: float = 214.5
    output_len_cv: float = 1.2
    system_prompt_len: int = 0
    words_per_token: float = 0.75  # our assumption (~1.33 Llama-2 tokens per English word)
    words_per_minute: float = 90.0  # authors' code
    max_context_len: int = MARCONI_CONTEXT_LIMIT
    cap_counts_output: bool = True  # LMSys: history + input + output; ShareGPT: no output
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        _check_common(self.num_sessions, self.session_rate, self.session_arrivals, self.vocab_size)
        if not 1 <= self.turns_min <= self.turns_max:
            raise ValueError(
                f"need 1 <= turns_min <= turns_max, got {self.turns_min} and {self.turns_max}"
            )
        if not self.turns_min <= self.turns_mean <= self.turns_max:
            raise ValueError(
                f"turns_mean={self.turns_mean} must lie in [turns_min, turns_max]"
                f" = [{self.turns_min}, {self.turns_max}]"
            )
        _check_length("input_len", self.input_len_mean, self.input_len_cv)
        _check_length("output_len", self.output_len_mean, self.output_len_cv)
        if not 0 <= self.system_prompt_len < self.max_context_len:
            raise ValueError(
                f"system_prompt_len={self.system_prompt_len} must be >= 0 and below "
                f"max_context_len={self.max_context_len}"
            )
        if not (self.words_per_token >= 0 and self.words_per_minute > 0):
            raise ValueError(
                f"words_per_token must be >= 0 and words_per_minute > 0, got "
                f"{self.words_per_token} and {self.words_per_minute}"
            )


#: LMSys-like chat (the :class:`ChatTraceParams` defaults).
LMSYS_LIKE = ChatTraceParams()

#: ShareGPT-like chat. Mean turns 13: our assumption, near the ~1.3k requests per 100 sessions
#: (estimated the same way) of the same third-party rerun. Lengths: the ShareGPT means of the
#: vLLM paper (Kwon et al., SOSP'23, Fig. 11: 161 input, 338 output tokens); applying them per
#: turn, and the CVs: our assumption.
SHAREGPT_LIKE = ChatTraceParams(
    turns_mean=13.0,
    input_len_mean=161.0,
    input_len_cv=2.0,
    output_len_mean=338.0,
    output_len_cv=0.9,
    cap_counts_output=False,
)


def generate_chat_trace(
    params: ChatTraceParams = LMSYS_LIKE, seed: int = 0, *, name: str = "chat"
) -> Workload:
    """Multi-turn chat sessions; see :class:`ChatTraceParams`.

    Turn k of session s is request ``"<name>:s<s>:t<k>"`` with ``session_id="<name>:s<s>"``,
    ``turn=k``, ``think_time_s`` = the typing gap before it and both ``prompt_token_ids`` and
    ``output_token_ids``. Metadata: ``user_tokens`` (the new message), ``words`` (its word
    count, which set the gap).
    """
    p = params
    starts = _session_starts(p.num_sessions, p.session_rate, p.session_arrivals, seed)
    system = random_tokens(
        np.random.default_rng([seed, _SYSTEM_STREAM]), p.system_prompt_len, p.vocab_size
    )
    words_per_s = p.words_per_minute / 60.0
    # Geometric on {1, 2, ...} shifted so the minimum is turns_min and the mean turns_mean.
    extra_p = 1.0 / (p.turns_mean - p.turns_min + 1.0)
    requests: list[Request] = []
    for s in range(p.num_sessions):
        rng = np.random.default_rng([seed, _CHAT_STREAM, s])
        planned = min(p.turns_max, p.turns_min - 1 + int(rng.geometric(extra_p)))
        user_lens = lognormal_lengths(rng, p.input_len_mean, p.input_len_cv, planned)
        out_lens = lognormal_lengths(rng, p.output_len_mean, p.output_len_cv, planned)
        history = list(system)
        t = float(starts[s])
        for k in range(planned):
            n_user, n_out = int(user_lens[k]), int(out_lens[k])
            need = len(history) + n_user + (n_out if p.cap_counts_output else 0)
            if need > p.max_context_len:
                break
            words = round(n_user * p.words_per_token)
            think = words / words_per_s if k else 0.0
            t += think
            prompt = history + random_tokens(rng, n_user, p.vocab_size)
            output = random_tokens(rng, n_out, p.vocab_size)
            requests.append(
                Request(
                    request_id=f"{name}:s{s}:t{k}",
                    arrival_time=t,
                    prompt_len=len(prompt),
                    output_len=n_out,
                    prompt_token_ids=prompt,
                    output_token_ids=output,
                    session_id=f"{name}:s{s}",
                    turn=k,
                    think_time_s=think,
                    metadata={"user_tokens": n_user, "words": words},
                )
            )
            history = prompt + output
    return Workload(
        name=f"{name}(seed={seed})",
        requests=requests,
        sources=["generator:chat_trace"],
        params={**asdict(p), "seed": seed},
    )


def lmsys_like(
    num_sessions: int = 100, session_rate: float = 1.0, seed: int = 0, **overrides: Any
) -> Workload:
    """LMSys-like chat sessions (:data:`LMSYS_LIKE` with ``overrides``), named ``lmsys``."""
    params = replace(LMSYS_LIKE, num_sessions=num_sessions, session_rate=session_rate, **overrides)
    return generate_chat_trace(params, seed, name="lmsys")


def sharegpt_like(
    num_sessions: int = 100, session_rate: float = 1.0, seed: int = 0, **overrides: Any
) -> Workload:
    """ShareGPT-like chat sessions (:data:`SHAREGPT_LIKE` with ``overrides``), named ``sharegpt``."""
    params = replace(
        SHAREGPT_LIKE, num_sessions=num_sessions, session_rate=session_rate, **overrides
    )
    return generate_chat_trace(params, seed, name="sharegpt")


# --------------------------------------------------------------------------- agent sessions


@dataclass(frozen=True)
class SWEAgentTraceParams:
    """SWE-bench-like coding-agent sessions shaped like the Marconi authors' SWE-bench trace.

    Contract:
    - a session plans ``min(turns_max, lognormal(turns_mean, turns_cv))`` turns; turn 0's
      observation is a ``system_prompt_len``-token prompt shared by every session plus the
      task (issue, lognormal ``task_len_mean``); turn k >= 1's observation is a tool output
      (lognormal ``observation_len_mean``); every turn outputs an action (lognormal
      ``action_len_mean``);
    - request k's prompt = for each earlier turn i its observation and action, then
      observation k. With ``keep_last_observations=K`` (authors: 5), observations of turns
      1..k-1-K are collapsed to ``collapsed_observation_len`` tokens (0: removed, as the
      authors do; otherwise the same fixed placeholder everywhere); turn 0 is never collapsed.
      So request k extends request k-1's prompt + action exactly for k <= K + 1; from then on
      each request collapses one more observation, and the shared prefix with request k-1
      ends where observation k-1-K was;
    - the gap before turn k >= 1 is Poisson(``response_time_mean_s``) **integer** seconds, as
      in the authors' code (the paper's 5 / 7.5 / 10 s);
    - the session ends before the first request whose prompt exceeds ``max_context_len``.

    The defaults are :data:`SWEBENCH_LIKE`.
    """

    num_sessions: int = 100
    session_rate: float = 1.0
    session_arrivals: SessionArrivals = "poisson"
    response_time_mean_s: float = 5.0  # paper / authors' code: 5, 7.5 or 10
    # Trajectory shape, all our assumption (the honeycomb trajectories are not in the repo):
    # long runs, often reaching the authors' 50-turn cut; an SWE-agent-style system prompt
    # with tool docs; file views and test logs of ~1k tokens; thought + command actions.
    turns_mean: float = 32.0
    turns_cv: float = 0.5
    turns_max: int = 50  # the paper's "up to 50 turns"
    system_prompt_len: int = 1536
    task_len_mean: float = 768.0
    task_len_cv: float = 0.5
    action_len_mean: float = 256.0
    action_len_cv: float = 0.6
    observation_len_mean: float = 1024.0
    observation_len_cv: float = 1.2
    keep_last_observations: int | None = 5  # authors' code; None: never collapse
    collapsed_observation_len: int = 0  # authors' code removes collapsed observations
    max_context_len: int = MARCONI_CONTEXT_LIMIT
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        _check_common(self.num_sessions, self.session_rate, self.session_arrivals, self.vocab_size)
        if not (self.response_time_mean_s >= 0 and math.isfinite(self.response_time_mean_s)):
            raise ValueError(
                f"response_time_mean_s must be finite and >= 0, got {self.response_time_mean_s}"
            )
        if self.turns_max < 1:
            raise ValueError(f"turns_max must be >= 1, got {self.turns_max}")
        _check_length("turns", self.turns_mean, self.turns_cv)
        _check_length("task_len", self.task_len_mean, self.task_len_cv)
        _check_length("action_len", self.action_len_mean, self.action_len_cv)
        _check_length("observation_len", self.observation_len_mean, self.observation_len_cv)
        if self.keep_last_observations is not None and self.keep_last_observations < 0:
            raise ValueError(
                f"keep_last_observations must be >= 0 or None, got {self.keep_last_observations}"
            )
        if self.system_prompt_len < 0 or self.collapsed_observation_len < 0:
            raise ValueError(
                "system_prompt_len and collapsed_observation_len must be >= 0, got "
                f"{self.system_prompt_len} and {self.collapsed_observation_len}"
            )
        if self.max_context_len < 1:
            raise ValueError(f"max_context_len must be >= 1, got {self.max_context_len}")


#: SWE-bench-like agent sessions (the :class:`SWEAgentTraceParams` defaults).
SWEBENCH_LIKE = SWEAgentTraceParams()


def generate_swe_agent_trace(
    params: SWEAgentTraceParams = SWEBENCH_LIKE, seed: int = 0, *, name: str = "swebench"
) -> Workload:
    """SWE-bench-like agent sessions; see :class:`SWEAgentTraceParams`.

    Turn k of session s is request ``"<name>:s<s>:t<k>"`` (``session_id="<name>:s<s>"``,
    ``turn=k``); its output is action k and its ``think_time_s`` the gap before it. Metadata:
    ``observation_tokens`` (observation k, full length), ``collapsed_observations`` (how many
    earlier observations this prompt has collapsed).
    """
    p = params
    keep = p.keep_last_observations
    starts = _session_starts(p.num_sessions, p.session_rate, p.session_arrivals, seed)
    system = random_tokens(
        np.random.default_rng([seed, _SYSTEM_STREAM]), p.system_prompt_len, p.vocab_size
    )
    placeholder = random_tokens(
        np.random.default_rng([seed, _COLLAPSE_STREAM]), p.collapsed_observation_len, p.vocab_size
    )
    requests: list[Request] = []
    for s in range(p.num_sessions):
        rng = np.random.default_rng([seed, _AGENT_STREAM, s])
        planned = int(min(p.turns_max, lognormal_lengths(rng, p.turns_mean, p.turns_cv, 1)[0]))
        task_len = int(lognormal_lengths(rng, p.task_len_mean, p.task_len_cv, 1)[0])
        obs_lens = lognormal_lengths(rng, p.observation_len_mean, p.observation_len_cv, planned)
        act_lens = lognormal_lengths(rng, p.action_len_mean, p.action_len_cv, planned)
        gaps = rng.poisson(p.response_time_mean_s, size=planned)
        observations: list[list[int]] = []
        actions: list[list[int]] = []
        # ``stable`` holds turn 0 and every already-collapsed turn: it never changes again, so
        # each prompt is stable + the intact recent turns + the new observation.
        stable: list[int] = []
        n_collapsed = 0
        t = float(starts[s])
        for k in range(planned):
            if k == 0:
                obs = system + random_tokens(rng, task_len, p.vocab_size)
            else:
                obs = random_tokens(rng, obs_lens[k], p.vocab_size)
            want = 0 if keep is None else max(0, k - 1 - keep)  # turns 1..want collapsed
            while n_collapsed < want:
                n_collapsed += 1
                stable = stable + placeholder + actions[n_collapsed]
            prompt = list(stable)
            for i in range(n_collapsed + 1, k):  # the intact recent turns
                prompt += observations[i] + actions[i]
            prompt += obs
            if len(prompt) > p.max_context_len:
                break
            think = float(gaps[k]) if k else 0.0
            t += think
            action = random_tokens(rng, act_lens[k], p.vocab_size)
            observations.append(obs)
            actions.append(action)
            if k == 0:
                stable = obs + action
            requests.append(
                Request(
                    request_id=f"{name}:s{s}:t{k}",
                    arrival_time=t,
                    prompt_len=len(prompt),
                    output_len=len(action),
                    prompt_token_ids=prompt,
                    output_token_ids=action,
                    session_id=f"{name}:s{s}",
                    turn=k,
                    think_time_s=think,
                    metadata={"observation_tokens": len(obs), "collapsed_observations": want},
                )
            )
    return Workload(
        name=f"{name}(seed={seed})",
        requests=requests,
        sources=["generator:swe_agent_trace"],
        params={**asdict(p), "seed": seed},
    )


def swebench_like(
    num_sessions: int = 100,
    session_rate: float = 1.0,
    response_time_mean_s: float = 5.0,
    seed: int = 0,
    **overrides: Any,
) -> Workload:
    """SWE-bench-like agent sessions (:data:`SWEBENCH_LIKE` with ``overrides``), named ``swebench``."""
    params = replace(
        SWEBENCH_LIKE,
        num_sessions=num_sessions,
        session_rate=session_rate,
        response_time_mean_s=response_time_mean_s,
        **overrides,
    )
    return generate_swe_agent_trace(params, seed, name="swebench")

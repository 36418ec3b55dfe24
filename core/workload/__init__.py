"""Workloads: the request schema, trace loaders, arrival processes and synthetic generators.

Every loader and generator returns a :class:`Workload` (arrival-ordered :class:`Request` s
plus their sources); every data file is opened through :func:`core.data.open_data_file`, so
runs record its sha256.

Schema (``core.workload.schema``)
    ``Interception``, ``Request``, ``Workload``

Loaders (a malformed record raises ``TraceFormatError("<file>:<line>: <what>")``, a
``ValueError``; a missing file raises ``FileNotFoundError`` naming it)
    ``load_azure(path=None, *, kind="code", limit=None, zero_tokens="clamp")``
    ``load_mooncake(path=None, *, limit=None, expand_tokens=False, vocab_size=32000, block_size=512)``
    ``load_loogle(path=None, *, task="longdep", max_documents=None, max_prompt_len=None, output_len=None, tokenizer=None)``
    ``load_toolbench(root=None, *, groups=("G1", "G2", "G3"), tool_duration_s=1.0, max_trajectories=None, tokenizer=None)``
    ``load_toolbench_queries(root=None, *, groups=..., output_len=128, tokenizer=None)``
    ``save_jsonl(workload, path)``, ``load_jsonl(path, *, limit=None)``: our exact-round-trip format
    ``load_marconi_jsonl(path, *, limit=None)``, ``save_marconi_jsonl(workload, path)``: the
    Marconi authors' session traces (``session_id, turn_id, ts, input_tokens, output_tokens``)
    ``load_trace(path, **kwargs)``, ``detect_format(path)``: any of the above, detected by content
    ``azure_trace_path(kind)``, ``mooncake_trace_path()``, ``loogle_path(task)``, ``toolbench_root()``
    ``expand_block_tokens(hash_ids, length, block_size=512, vocab_size=32000)``, ``block_token_ids(...)``

Tokenizer
    ``HashTokenizer(vocab_size=32000, max_piece_chars=4, n_special=4)``: deterministic,
    dependency-free, approximate counts; ``Tokenizer`` protocol (``encode(text) -> list[int]``)

Arrivals
    ``PoissonProcess(rate)``, ``GammaProcess(rate, cv)``, ``TraceReplay(recorded, speedup=, rate=)``
    (``.times(n, seed)``), ``poisson_arrivals(n, rate, seed)``, ``gamma_arrivals(n, rate, cv, seed)``,
    ``assign_arrivals(workload, process, *, by="request"|"session", seed=0, shuffle=True)``,
    ``scale_arrivals(workload, *, speedup=None, rate=None)``

Generators (same params + seed -> identical workload)
    ``generate_shared_prefix(SharedPrefixParams(...), seed)``
    ``generate_chat_sessions(ChatSessionParams(...), seed)``
    ``generate_agentic_sessions(AgenticParams(...), seed)``
    helpers: ``lognormal_lengths``, ``zipf_weights``, ``random_tokens``

Marconi's session workloads (``core.workload.sessions``)
    ``lmsys_like(num_sessions=100, session_rate=1.0, seed=0, **overrides)``,
    ``sharegpt_like(...)``, ``swebench_like(num_sessions=100, session_rate=1.0,
    response_time_mean_s=5.0, seed=0, **overrides)``; underneath
    ``generate_chat_trace(ChatTraceParams(...), seed)`` and
    ``generate_swe_agent_trace(SWEAgentTraceParams(...), seed)`` with the presets
    ``LMSYS_LIKE``, ``SHAREGPT_LIKE``, ``SWEBENCH_LIKE``
    ``session_stats(workload) -> dict``: turns, lengths, think times, prefix reuse

Preble's five workloads (``core.workload.preble``)
    ``generate_preble_workload(name, num_requests, rate, seed=0, *, arrivals="poisson"|"azure",
    length_scale=1.0, vocab_size=32000, **overrides)`` for ``name`` in ``PREBLE_WORKLOADS``
    (``"toolbench"``, ``"embodied"``, ``"programming"``, ``"videoqa"``, ``"loogle"``; each a
    ``PrebleSpec`` with the paper's statistics); underneath ``generate_preble_<name>(params,
    seed)`` with ``PrebleParams`` and its subclasses ``PrebleToolBenchParams``,
    ``PrebleEmbodiedParams``, ``PrebleProgrammingParams``, ``PrebleVideoQAParams``,
    ``PrebleLooGLEParams``
    ``shared_fraction(workload)``: prompt tokens an infinite prefix cache would hit;
    ``preble_workload_stats(workload) -> dict``: ``session_stats`` + prompt mean/std, output
    mean, shared fraction

InferCept's augmentation workloads (``core.workload.infercept``)
    ``generate_infercept_workload(kind, num_requests, rate, seed=0, *, length_scale=1.0,
    duration_scale=1.0, vocab_size=32000, mix=None)`` for ``kind`` in ``AUGMENTATIONS``
    (``"arithmetic"``, ``"qa"``, ``"virtual_env"``, ``"chatbot"``, ``"image"``, ``"tts"``; each
    an ``AugmentationProfile``), ``SYNTHETIC_PROFILES`` (the authors' ``synthetic-<shape>``
    sweeps) or ``"mixed"``; ``toolbench_interceptions(num_requests=None, rate=1.0, seed=0, *,
    duration="toolbench", ...)``: pausing requests from the shipped ToolBench trajectories;
    ``infercept_workload_stats(workload) -> dict``: per-kind calls, lengths, durations;
    call durations: ``AUTHORS_DURATIONS``, ``TOOLBENCH_DURATION``, the ``Duration`` protocol and
    ``LogNormalDuration``, ``AbsNormalDuration``, ``UniformDuration``, ``GammaDuration``,
    ``MixtureDuration``

Transforms
    ``sessions_to_interceptions(workload, *, kind="tool")``: one pausing request per session
"""

from core.workload.arrivals import (
    ArrivalProcess,
    GammaProcess,
    PoissonProcess,
    TraceReplay,
    assign_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    scale_arrivals,
)
from core.workload.errors import TraceFormatError
from core.workload.generators import (
    AgenticParams,
    ChatSessionParams,
    SharedPrefixParams,
    generate_agentic_sessions,
    generate_chat_sessions,
    generate_shared_prefix,
    lognormal_lengths,
    random_tokens,
    zipf_weights,
)
from core.workload.infercept import (
    AUGMENTATIONS,
    AUTHORS_DURATIONS,
    INFERCEPT_PROFILES,
    SYNTHETIC_PROFILES,
    TOOLBENCH_DURATION,
    AbsNormalDuration,
    AugmentationProfile,
    Duration,
    GammaDuration,
    LogNormalDuration,
    MixtureDuration,
    UniformDuration,
    generate_infercept_workload,
    infercept_workload_stats,
    toolbench_interceptions,
)
from core.workload.loaders import (
    azure_trace_path,
    detect_format,
    load_azure,
    load_jsonl,
    load_loogle,
    load_mooncake,
    load_toolbench,
    load_toolbench_queries,
    load_trace,
    loogle_path,
    mooncake_trace_path,
    save_jsonl,
    toolbench_root,
)
from core.workload.mooncake import block_token_ids, expand_block_tokens
from core.workload.preble import (
    PREBLE_WORKLOADS,
    PrebleEmbodiedParams,
    PrebleLooGLEParams,
    PrebleParams,
    PrebleProgrammingParams,
    PrebleSpec,
    PrebleToolBenchParams,
    PrebleVideoQAParams,
    generate_preble_embodied,
    generate_preble_loogle,
    generate_preble_programming,
    generate_preble_toolbench,
    generate_preble_videoqa,
    generate_preble_workload,
    preble_workload_stats,
    shared_fraction,
)
from core.workload.schema import Interception, Request, Workload
from core.workload.sessions import (
    LMSYS_LIKE,
    SHAREGPT_LIKE,
    SWEBENCH_LIKE,
    ChatTraceParams,
    SWEAgentTraceParams,
    generate_chat_trace,
    generate_swe_agent_trace,
    lmsys_like,
    load_marconi_jsonl,
    save_marconi_jsonl,
    session_stats,
    sharegpt_like,
    swebench_like,
)
from core.workload.tokenize import HashTokenizer, Tokenizer
from core.workload.transforms import sessions_to_interceptions

__all__ = [
    "AUGMENTATIONS",
    "AUTHORS_DURATIONS",
    "INFERCEPT_PROFILES",
    "LMSYS_LIKE",
    "PREBLE_WORKLOADS",
    "SHAREGPT_LIKE",
    "SWEBENCH_LIKE",
    "SYNTHETIC_PROFILES",
    "TOOLBENCH_DURATION",
    "AbsNormalDuration",
    "AgenticParams",
    "ArrivalProcess",
    "AugmentationProfile",
    "ChatSessionParams",
    "ChatTraceParams",
    "Duration",
    "GammaDuration",
    "GammaProcess",
    "HashTokenizer",
    "Interception",
    "LogNormalDuration",
    "MixtureDuration",
    "PoissonProcess",
    "PrebleEmbodiedParams",
    "PrebleLooGLEParams",
    "PrebleParams",
    "PrebleProgrammingParams",
    "PrebleSpec",
    "PrebleToolBenchParams",
    "PrebleVideoQAParams",
    "Request",
    "SWEAgentTraceParams",
    "SharedPrefixParams",
    "Tokenizer",
    "TraceFormatError",
    "TraceReplay",
    "UniformDuration",
    "Workload",
    "assign_arrivals",
    "azure_trace_path",
    "block_token_ids",
    "detect_format",
    "expand_block_tokens",
    "gamma_arrivals",
    "generate_agentic_sessions",
    "generate_chat_sessions",
    "generate_chat_trace",
    "generate_infercept_workload",
    "generate_preble_embodied",
    "generate_preble_loogle",
    "generate_preble_programming",
    "generate_preble_toolbench",
    "generate_preble_videoqa",
    "generate_preble_workload",
    "generate_shared_prefix",
    "generate_swe_agent_trace",
    "infercept_workload_stats",
    "load_azure",
    "load_jsonl",
    "load_loogle",
    "load_marconi_jsonl",
    "load_mooncake",
    "load_toolbench",
    "load_toolbench_queries",
    "load_trace",
    "lmsys_like",
    "lognormal_lengths",
    "loogle_path",
    "mooncake_trace_path",
    "poisson_arrivals",
    "preble_workload_stats",
    "random_tokens",
    "save_jsonl",
    "save_marconi_jsonl",
    "scale_arrivals",
    "session_stats",
    "sessions_to_interceptions",
    "shared_fraction",
    "sharegpt_like",
    "swebench_like",
    "toolbench_interceptions",
    "toolbench_root",
    "zipf_weights",
]

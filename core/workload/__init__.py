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
    helpers: ``lognormal_lengths``, ``zipf_weights``, ``random_tokens``, ``jsonable_params``

Session traces (``core.workload.sessions``)
    ``session_stats(workload) -> dict``: turns, lengths, think times, prefix reuse of any
    workload; ``common_prefix_len(a, b)``

Generators of one paper's workloads live in its artifact (``artifacts/<name>/``): Marconi's
LMSys/ShareGPT/SWE-bench-like sessions, Preble's five workloads, InferCept's augmentations.

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
    jsonable_params,
    lognormal_lengths,
    random_tokens,
    zipf_weights,
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
from core.workload.schema import Interception, Request, Workload
from core.workload.sessions import (
    common_prefix_len,
    load_marconi_jsonl,
    save_marconi_jsonl,
    session_stats,
)
from core.workload.tokenize import HashTokenizer, Tokenizer
from core.workload.transforms import sessions_to_interceptions

__all__ = [
    "AgenticParams",
    "ArrivalProcess",
    "ChatSessionParams",
    "GammaProcess",
    "HashTokenizer",
    "Interception",
    "PoissonProcess",
    "Request",
    "SharedPrefixParams",
    "Tokenizer",
    "TraceFormatError",
    "TraceReplay",
    "Workload",
    "assign_arrivals",
    "azure_trace_path",
    "block_token_ids",
    "common_prefix_len",
    "detect_format",
    "expand_block_tokens",
    "gamma_arrivals",
    "generate_agentic_sessions",
    "generate_chat_sessions",
    "generate_shared_prefix",
    "jsonable_params",
    "load_azure",
    "load_jsonl",
    "load_loogle",
    "load_marconi_jsonl",
    "load_mooncake",
    "load_toolbench",
    "load_toolbench_queries",
    "load_trace",
    "lognormal_lengths",
    "loogle_path",
    "mooncake_trace_path",
    "poisson_arrivals",
    "random_tokens",
    "save_jsonl",
    "save_marconi_jsonl",
    "scale_arrivals",
    "session_stats",
    "sessions_to_interceptions",
    "toolbench_root",
    "zipf_weights",
]

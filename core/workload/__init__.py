"""Workloads: the request schema, trace loaders, arrival processes and synthetic generators.

Every loader and generator returns a :class:`Workload` (arrival-ordered :class:`Request` s
plus their sources); every data file is opened through :func:`core.data.open_data_file`, so
runs record its sha256. A malformed record raises ``TraceFormatError("<file>:<line>: <what>")``
(a ``ValueError``), a missing file ``FileNotFoundError`` naming it. Generators are
deterministic: same params and seed, identical workload. One paper's own workload generators
live in its artifact (``artifacts/<name>/``).

The public names by group (schema, loaders, tokenizer, arrivals, generators, sessions,
transforms): docs/core/workload.md.
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

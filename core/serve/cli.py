"""``servelab serve MODEL [options]`` and ``python -m core.serve MODEL [options]``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main", "parse_bytes"]

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_bytes(text: str) -> int:
    """``"512MiB"``, ``"2G"``, ``"1048576"`` -> bytes; ArgumentTypeError naming the value."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512MiB, 2G, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a checkpoint folder (config.json + safetensors [+ tokenizer.json]), a zoo model "
        "under data/models/, or a preset name such as tiny-llama-125m (random weights)",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    net.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    net.add_argument("--api-key", default=None, help="require Authorization: Bearer <key> on /v1/*")
    net.add_argument(
        "--served-model-name",
        default=None,
        help="the model name clients send (default: MODEL as given)",
    )
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--max-num-seqs", type=int, default=64, help="sequences per batch (default 64)"
    )
    eng.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="tokens per step (default 2048)"
    )
    eng.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    eng.add_argument(
        "--kv-cache-memory",
        type=parse_bytes,
        default=512 * 2**20,
        help="KV cache size per replica (default 512MiB)",
    )
    eng.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    eng.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse cached KV of shared prompt prefixes (default on)",
    )
    eng.add_argument(
        "--dtype", default="float32", help="float32, bfloat16 or float16 (default float32)"
    )
    eng.add_argument(
        "--seed", type=int, default=0, help="sampling seed and random-weight seed (default 0)"
    )
    eng.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    fleet = p.add_argument_group("fleet")
    fleet.add_argument(
        "--fleet", type=int, default=1, help="engine replicas in this process (default 1)"
    )
    fleet.add_argument(
        "--fleet-backend",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="inprocess: replicas stepped in turn by one thread; ray: one Ray actor (one CPU) "
        "per replica, in parallel, on a local Ray instance or the one running (default inprocess)",
    )
    fleet.add_argument(
        "--router",
        default="round-robin",
        help="with --fleet > 1: round-robin, least-work, prefix-affinity, a name an artifact "
        "registered, or an import path module:Class (default round-robin)",
    )
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting beyond the running ones before a 429 (default 256)",
    )
    lim.add_argument(
        "--max-choices",
        type=int,
        default=16,
        help="most sequences per request, n x prompts (default 16)",
    )
    lim.add_argument(
        "--max-body-bytes",
        type=parse_bytes,
        default=4 * 2**20,
        help="largest request body (default 4MiB)",
    )
    lim.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=None,
        help="abort requests running longer, seconds (default: none)",
    )
    lim.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds shutdown waits for requests in flight (default 30)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")


def build_parser(prog: str = "servelab") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Servelab command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server on the engine",
        description=serve_description(),
    )
    add_serve_arguments(serve)
    return parser


def serve_description() -> str:
    return (
        "An OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics) on the real engine. See docs/core/serve.md."
    )


def serve(args: argparse.Namespace) -> int:
    from .server import EngineOptions, HttpServer, load_engine

    opts = EngineOptions(
        served_model_name=args.served_model_name,
        fleet=args.fleet,
        backend=args.fleet_backend,
        router=args.router,
        max_queue=args.max_queue,
        api_key=args.api_key,
        max_choices=args.max_choices,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        shutdown_grace_s=args.shutdown_grace,
        threads=args.threads,
        engine=dict(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            kv_cache_memory=args.kv_cache_memory,
            block_size=args.block_size,
            enable_prefix_caching=args.enable_prefix_caching,
            dtype=args.dtype,
            seed=args.seed,
        ),
    )
    try:
        engine, cfg = load_engine(args.model, opts)
        server = HttpServer(engine, cfg, args.host, args.port, log_level=args.log_level)
    except (ValueError, OSError, FileNotFoundError) as exc:
        print(f"servelab serve: error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(
            f"servelab: warning: listening on {args.host} without --api-key: anyone who can reach "
            "this port can use the model",
            file=sys.stderr,
        )
    print(f"servelab: serving {cfg.model_name!r} on {server.url}", file=sys.stderr, flush=True)
    server.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return serve(args)


def module_main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.serve MODEL [options]`` (no subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m core.serve", description=serve_description())
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

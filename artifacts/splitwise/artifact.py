"""Splitwise's trace characterization, reproduced from the trace it released.

Splitwise (Patel et al., ISCA'24) released the Azure LLM inference trace it characterizes; the
dataset's own README says the released sample reproduces the paper's characterization graphs.
This artifact measures the token distributions and arrivals of both services (coding and
conversation) and checks the paper's headline numbers about them. The phase-splitting
experiments need the simulator and are not part of it yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.artifact import (
    Artifact,
    Claim,
    Experiment,
    NotApplicable,
    Paper,
    Results,
    RunContext,
    Scale,
    TraceOption,
    at_least,
    close_to,
)
from core.workload import load_azure

from .plots import plot_arrivals, plot_lengths

# smoke reads the first rows only; default and full read the whole trace (it is small)
ROW_LIMIT = {Scale.SMOKE: 2000, Scale.DEFAULT: None, Scale.FULL: None}
QUANTILES = [round(q, 3) for q in np.linspace(0.0, 1.0, 201)]


def _services(ctx: RunContext) -> list[dict]:
    if ctx.trace is not None:
        return [{"service": ctx.trace.stem, "path": str(ctx.trace)}]
    return [{"service": "coding", "kind": "code"}, {"service": "conversation", "kind": "conv"}]


def _load(config: dict):
    limit = config.get("limit")
    if "path" in config:
        return load_azure(config["path"], limit=limit)
    return load_azure(kind=config["kind"], limit=limit)


def length_points(ctx: RunContext) -> list[dict]:
    return [{**s, "limit": ROW_LIMIT[ctx.scale]} for s in _services(ctx)]


def length_quantiles(config: dict) -> list[dict]:
    """Prompt and output token counts at 201 quantiles (the CDFs), plus the request count."""
    w = _load(config)
    prompt = np.array([r.prompt_len for r in w])
    output = np.array([r.output_len for r in w])
    pq = np.quantile(prompt, QUANTILES)
    oq = np.quantile(output, QUANTILES)
    return [
        {"quantile": q, "prompt_tokens": float(p), "output_tokens": float(o), "requests": len(w)}
        for q, p, o in zip(QUANTILES, pq, oq, strict=True)
    ]


def arrival_points(ctx: RunContext) -> list[dict]:
    return [{**s, "limit": ROW_LIMIT[ctx.scale], "bin_s": 60} for s in _services(ctx)]


def arrivals_per_bin(config: dict) -> list[dict]:
    """Requests and tokens arriving in each ``bin_s``-second bin of the trace."""
    w = _load(config)
    t = np.array([r.arrival_time for r in w])
    bins = (t // config["bin_s"]).astype(int)
    n_bins = int(bins.max()) + 1 if len(bins) else 0
    reqs = np.bincount(bins, minlength=n_bins)
    prompt = np.bincount(bins, weights=[r.prompt_len for r in w], minlength=n_bins)
    output = np.bincount(bins, weights=[r.output_len for r in w], minlength=n_bins)
    return [
        {
            "bin": i,
            "minute": i * config["bin_s"] / 60,
            "requests": int(reqs[i]),
            "prompt_tokens": float(prompt[i]),
            "output_tokens": float(output[i]),
        }
        for i in range(n_bins)
    ]


def _median(results: Results, service: str, column: str) -> float:
    f = results["lengths"]
    if results.ctx.trace is not None:
        raise NotApplicable(
            f"--trace {results.ctx.trace.name} is characterized on its own; the "
            f"paper's number is about Azure's {service} service"
        )
    row = f[(f["service"] == service) & (f["quantile"] == 0.5)]
    if len(row) != 1:
        raise KeyError(f"no median row for service {service!r}")
    return float(row[column].iloc[0])


def describe_input(results: Results) -> str:
    """What the lengths were measured over, from this run's own rows."""
    f = results["lengths"]
    counts = f.groupby("service")["requests"].first()
    sizes = ", ".join(f"{name} {int(n):,} requests" for name, n in counts.items())
    if results.ctx.trace is not None:
        return f"Measured over --trace {results.ctx.trace.name} ({sizes})."
    limit = ROW_LIMIT[results.ctx.scale]
    part = f"the first {limit:,} rows of each" if limit else "the whole of each"
    return f"Measured over {part} released one-hour sample ({sizes})."


def _check_trace(path: Path) -> None:
    load_azure(path)  # a malformed row raises TraceFormatError("file:line: ...")


def _median_claim(cid: str, service: str, column: str, words: str, paper: float) -> Claim:
    # tolerance fixed a priori: 5% of the paper's number, at least one token
    tol = max(1.0, 0.05 * paper)
    return Claim(
        cid,
        words,
        f"{paper:g} tokens",
        measure=lambda r: _median(r, service, column),
        expect=close_to(paper, tol),
        unit="tokens",
        experiments=("lengths",),
        note=lambda r: (
            "Paper number from Splitwise's trace characterization (unverified: quoted "
            "from the paper's text, not re-read from the PDF here). " + describe_input(r)
        ),
    )


ARTIFACT = Artifact(
    name="splitwise",
    paper=Paper(
        title="Splitwise: Efficient Generative LLM Inference Using Phase Splitting",
        venue="ISCA'24",
        authors="Patel, Choukse, Zhang, Shah, Goiri, Maleki, Bianchini",
        url="https://www.microsoft.com/en-us/research/publication/splitwise-efficient-generative-llm-inference-using-phase-splitting/",
        code="https://github.com/Azure/AzurePublicDataset",
    ),
    summary="Token-length distributions and arrivals of the Azure LLM inference trace 2023 "
    "(coding and conversation), checked against the paper's characterization.",
    experiments=[
        Experiment(
            "lengths",
            "prompt and output token CDFs per service",
            length_points,
            length_quantiles,
            plot_lengths,
        ),
        Experiment(
            "arrivals",
            "requests and tokens per minute over the trace",
            arrival_points,
            arrivals_per_bin,
            plot_arrivals,
        ),
    ],
    claims=[
        _median_claim(
            "coding-prompt-median",
            "coding",
            "prompt_tokens",
            "Coding requests have a median prompt of 1500 tokens.",
            1500,
        ),
        _median_claim(
            "conversation-prompt-median",
            "conversation",
            "prompt_tokens",
            "Conversation requests have a median prompt of 1020 tokens.",
            1020,
        ),
        _median_claim(
            "coding-output-median",
            "coding",
            "output_tokens",
            "Coding requests generate a median of 13 tokens.",
            13,
        ),
        _median_claim(
            "conversation-output-median",
            "conversation",
            "output_tokens",
            "Conversation requests generate a median of 129 tokens.",
            129,
        ),
        Claim(
            "output-ratio",
            "Conversation generates far more tokens per request than coding, whose prompts "
            "are longer: the two services stress the token phase very differently.",
            "129 / 13 ≈ 9.9x",
            measure=lambda r: (
                _median(r, "conversation", "output_tokens") / _median(r, "coding", "output_tokens")
            ),
            expect=at_least(5.0),
            unit="x",
            experiments=("lengths",),
            expected="median output ratio conversation/coding >= 5x",
            note=describe_input,
        ),
    ],
    trace=TraceOption(
        help="an Azure-LLM-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens) to characterize "
        "instead of the shipped traces (its CDFs and arrivals are drawn; the paper's claims about "
        "Azure's coding and conversation services are then not applicable)",
        check=_check_trace,
    ),
)

"""Words for notes, figure titles and annotations, derived from the run that was made.

Everything here reads the rows a run produced (``stream_*`` columns, ``cpu_profile``,
``alpha_status``) and its :class:`~core.artifact.RunContext`, never a fixed description: a
``--trace`` run names its file and size, a run at another scale names its own session counts,
and the CPU TTFT names the profile file that timed it and where that was measured.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.artifact import RunContext
from core.metrics import order_words
from core.sim.profiled import cpu_device_slug, cpu_model_name, load_pinned_profile, profile_origin

from .hitrate import (
    CPU_PROFILE_MODEL,
    CPU_PROFILE_THREADS,
    MOONCAKE_REQUESTS,
    TRACE_CACHE_FRACTIONS,
    window_factor,
)
from .plots import real_summary
from .workloads import MAX_CONTEXT, MOONCAKE

NAMES = {
    "lmsys": "LMSys-like",
    "sharegpt": "ShareGPT-like",
    "swebench": "SWE-bench-like",
    MOONCAKE: "Mooncake",
    "trace": "trace",
}


def _n(x: float) -> str:
    return f"{int(x):,}"


def _tokens(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.0f}K" if x >= 1e4 else _n(x)


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return _n(lo) if lo == hi else f"{_n(lo)}-{_n(hi)}"


def _one_per_stream(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per replayed stream (workload, rate, response time): the first policy and cache."""
    return frame.drop_duplicates(["workload", "rate", "response_s", "sessions"])


def is_trace_run(ctx: RunContext) -> bool:
    return ctx.trace is not None


def trace_words(frame: pd.DataFrame, ctx: RunContext) -> str:
    """``mine.jsonl (Mooncake format): 12 requests, no sessions, 20K prompt tokens``."""
    from core.workload import detect_format

    row = _one_per_stream(frame).iloc[0]
    path = Path(str(ctx.trace))
    limit = MOONCAKE_REQUESTS[ctx.scale]
    read, kept = int(row["stream_read"]), int(row["requests"])
    head = (
        f"its first {_n(read)} requests (the {ctx.scale.value} scale's limit)"
        if limit is not None and read >= limit
        else f"all {_n(read)} requests"
    )
    dropped = int(row["stream_dropped"])
    kept_words = (
        f"{_n(kept)} replayed ({_n(dropped)} over the {MAX_CONTEXT // 1024}K cap dropped)"
        if dropped
        else f"all replayed (none over the {MAX_CONTEXT // 1024}K cap)"
    )
    sessions = int(row["stream_sessions"])
    sess = (
        f"{_n(sessions)} sessions"
        if sessions
        else "no sessions (independent requests: reuse comes only from shared prefixes)"
    )
    return (
        f"the trace {path.name} ({detect_format(path)} format): {head}, {kept_words}; "
        f"{sess}; {_tokens(row['prompt_tokens'])} prompt tokens"
    )


def stream_words(frame: pd.DataFrame, ctx: RunContext) -> str:
    """What the hit-rate replay ran on, for claim notes (one or two sentences)."""
    if frame.empty:
        return "no hit-rate rows"
    caches = ", ".join(f"{g:.3g}" for g in sorted(frame["cache_gb"].unique()))
    if is_trace_run(ctx):
        fractions = ", ".join(f"{100 * f:g}%" for f in TRACE_CACHE_FRACTIONS)
        return (
            f"Cache-level replay (the paper's 7B hybrid's bytes and FLOPs) of "
            f"{trace_words(frame, ctx)}; caches of {fractions} of the KV its sequences need "
            f"({caches} GB). The expectations are the paper's, set for its LMSys, ShareGPT "
            "and SWE-bench session traces, and no setting of this artifact was tuned to this "
            "trace: a miss here measures how its reuse differs from theirs (README: generated "
            "sessions versus real traces)."
        )
    parts, moon = [], ""
    streams = _one_per_stream(frame)
    for w, g in streams.groupby("workload", sort=False):
        if w == MOONCAKE:
            r = g.iloc[0]
            moon = (
                f"; and the first {_n(r['stream_read'])} requests of the Mooncake trace "
                f"({_n(r['requests'])} under the {MAX_CONTEXT // 1024}K cap, no sessions)"
            )
        else:
            parts.append(
                f"{NAMES.get(w, w)} {_span(g['stream_sessions'])} sessions / "
                f"{_span(g['requests'])} requests"
            )
    return (
        "Cache-level replay (the paper's 7B hybrid's bytes and FLOPs) of synthetic sessions "
        "made with the statistics of the authors' traces, not the traces themselves: "
        f"{'; '.join(parts)} per arrival rate{moon}. Each generated turn extends its "
        "session's previous sequence, the reuse Marconi's admission is built for; on a real "
        "multi-turn trace the gap to vLLM+ was far smaller (README: generated sessions "
        "versus real traces)."
    )


def stream_title(frame: pd.DataFrame, ctx: RunContext) -> str:
    """A figure subtitle: what was replayed, in a line."""
    if is_trace_run(ctx):
        return trace_words(frame, ctx)
    streams = _one_per_stream(frame)
    names = [NAMES.get(w, w) for w in dict.fromkeys(streams["workload"]) if w != MOONCAKE]
    text = f"synthetic {', '.join(names)} sessions"
    if MOONCAKE in set(streams["workload"]):
        r = streams[streams["workload"] == MOONCAKE].iloc[0]
        text += f" + first {_n(r['stream_read'])} Mooncake requests"
    return text + "; 7B hybrid's bytes"


# ------------------------------------------------------------------------------ the CPU profile


def _profile(frame: pd.DataFrame):  # -> ProfiledCostModel
    names = frame["cpu_profile"].dropna().unique()
    if len(names) != 1:
        raise ValueError(f"expected one CPU profile in the rows, found {list(names)}")
    shas = frame["cpu_profile_sha256"].dropna().unique()
    return load_pinned_profile(str(names[0]), str(shas[0]) if len(shas) == 1 else None)


def profile_is_this_cpus(frame: pd.DataFrame) -> bool:
    """Whether the profile used is the one ``nox -s calibrate`` names for this CPU's model."""
    own = f"{cpu_device_slug(cpu_model_name(), CPU_PROFILE_THREADS)}-{CPU_PROFILE_MODEL}.json"
    return Path(str(frame["cpu_profile"].iloc[0])).name == own


def profile_words(frame: pd.DataFrame) -> str:
    """The profile's file, device, host, date and commit, and why it was chosen."""
    model = _profile(frame)
    git = (model.profile.get("provenance") or {}).get("git") or {}
    why = (
        "the profile named for this CPU model"
        if profile_is_this_cpus(frame)
        else f"no profile for this CPU ({cpu_model_name()}) exists, so the shipped fallback"
    )
    dirty = " with uncommitted changes" if git.get("dirty") else ""
    return (
        f"{why}, {profile_origin(model)}. It was measured from a checkout{dirty}; engine "
        "changes after its commit are not in its times (recalibrate: README, TTFT on your "
        "CPU)"
    )


def profile_title(frame: pd.DataFrame) -> str:
    """Short: ``tiny hybrid, profile cpu-amd-epyc-1t-... (AMD EPYC, host vm, 2026-11-23)``."""
    model = _profile(frame)
    dev = model.profile.get("device") or {}
    date = str(model.profile.get("created", "?"))[:10]
    host = f", host {dev['hostname']}" if dev.get("hostname") else ""
    return f"{Path(model.source).name}\n({dev.get('name', '?')}{host}, {date})"


# -------------------------------------------------------------------------------- alpha tuning


def tuning_words(frame: pd.DataFrame) -> str:
    """How many configurations tuned alpha, and why the others did not."""
    m = frame[frame["policy"] == "marconi"]
    counts = m["alpha_status"].value_counts()
    parts = [f"{counts.get('tuned', 0)} of {len(m)} configurations tuned alpha"]
    if counts.get("window not over", 0):
        lmsys = "; 15 x N0 on LMSys-like" if "lmsys" in set(m["workload"]) else ""
        parts.append(
            f"{counts['window not over']} did not: the tuning window (5 x N0 requests "
            f"after the first eviction{lmsys}) ran past the end of the stream"
        )
    if counts.get("no eviction", 0):
        parts.append(
            f"{counts['no eviction']} never evicted (the cache held the whole stream), "
            "so tuning never started"
        )
    return "; ".join(parts)


def untuned_reason(g: pd.DataFrame) -> str:
    """For one workload's Marconi rows: a short annotation when alpha was not tuned everywhere
    (the numbers behind it are in metrics.csv: ``n0``, ``tuning_window``, ``requests``)."""
    status = g["alpha_status"]
    n, tuned = len(g), int((status == "tuned").sum())
    if tuned == n:
        return ""
    lines = [f"tuned in {tuned} of {n}"]
    late = int((status == "window not over").sum())
    if late:
        w = window_factor(str(g["workload"].iloc[0]))
        lines.append(f"{late}: window of {w}xN0\nlonger than the\nrest of the stream")
    if (status == "no eviction").any():
        lines.append(f"{int((status == 'no eviction').sum())}: no eviction")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the real mode


def real_run_words(frame: pd.DataFrame, cpu: str) -> str:
    """What the real mode ran, from its rows: the model and CPU, the sessions, the clock and the
    rounds in the order they ran."""
    rounds = real_summary(frame).rounds
    return (
        f"a tiny hybrid model served by the engine on this CPU ({cpu}), "
        f"{int(frame['sessions'].iloc[0])} LMSys-like sessions made for the tiny model "
        f"({int(frame['requests'].iloc[0])} turns) with a shared 256-token system prompt, "
        "timed on the engine thread's CPU clock (its CPU seconds plus the sessions' arrival "
        "gaps, which are not slept: time other processes take from the core does not "
        f"count); {rounds} round{'s' if rounds != 1 else ''}, each run on a fresh engine, in "
        f"this order (rounds split by |): {order_words(frame, 'policy')}; the real mode does "
        "not read --trace"
    )


def real_hit_words(frame: pd.DataFrame) -> str:
    """Each policy's hit rates in the engine and in the replay, and its TTFT on the CPU clock:
    medians over rounds with their min-max."""
    s = real_summary(frame)
    what = "median (min-max) over rounds" if s.rounds > 1 else "in its one round"
    hits = "; ".join(
        f"{k} {s.median_range(k, 'real_hit_rate')} against {s.median_range(k, 'replay_hit_rate')}"
        for k in s.per_key.index
    )
    ttft = "; ".join(
        f"{k} {s.median_range(k, 'ttft_mean_ms', '.0f', ' ms')}" for k in s.per_key.index
    )
    return (
        f"Token hit rate, engine against replay, {what}: {hits}. Mean TTFT on the engine's "
        f"CPU clock, {what}: {ttft}."
    )

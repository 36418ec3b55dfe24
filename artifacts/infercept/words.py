"""The words of the claims' notes, derived from what a run did: its scale, the models, rates and
windows it swept, the rounds of the real mode, and the profile InferCept's cost line came from."""

from __future__ import annotations

from collections.abc import Sequence

from core.artifact import Results
from core.artifact.words import pinned_profile
from core.metrics import order_words

from . import real
from .plots import SLO_FACTOR, real_summary, setup_label
from .sim import ESTIMATED

SIM = (
    "Simulated A100s (roofline cost model; InferCept estimates T_fwd with the authors' linear "
    "fit), the six augmentation types with per-type numbers that are partly our assumptions; "
    f"latency bound: mean normalized latency <= {SLO_FACTOR:g}x the unloaded one. See the "
    "README."
)


def rates_words(rates: Sequence[float]) -> str:
    rates = sorted(set(float(x) for x in rates))
    if len(rates) > 3:
        return f"{rates[0]:g}-{rates[-1]:g} req/s ({len(rates)} rates)"
    return ", ".join(f"{x:g}" for x in rates) + " req/s"


def sim_words(r: Results) -> str:
    if "sim" not in r:
        return SIM
    f = r["sim"].assign(model=lambda d: setup_label(d))
    models = "; ".join(
        f"{m} at {rates_words(g['rate'])}" for m, g in f.groupby("model", sort=False)
    )
    est = sorted(set(f.loc[f["policy"] == ESTIMATED, "model"]))
    windows = "/".join(f"{w:g}" for w in sorted(set(f["window_s"])))
    extra = f"; InferCept with per-type mean durations on {', '.join(est)}" if est else ""
    return (
        f"{SIM} This run ({r.ctx.scale.value} scale): the mixed workload, {models}; "
        f"{windows} s arrival windows{extra}."
    )


def breakdown_words(r: Results) -> str:
    if "breakdown" not in r:
        return SIM
    b = r["breakdown"]
    kinds = ", ".join(dict.fromkeys(b["kind"]))
    loads = ", ".join(f"{x:g}x" for x in sorted(set(b["load"])))
    windows = "/".join(f"{w:g}" for w in sorted(set(b["window_s"])))
    return (
        f"{SIM} This run ({r.ctx.scale.value} scale): {setup_label(b).iloc[0]}, each type "
        f"alone ({kinds}) at {loads} its capacity (the smaller of the rate at which "
        f"preserved contexts fill memory and the compute rate), {windows} s arrival windows."
    )


def real_words(r: Results) -> str:
    """What the real run was, and its medians with their spread over rounds."""
    if "real" not in r:
        return "The real engine on this machine, one thread, a ~20M-parameter Llama."
    f = r["real"]
    s = real_summary(f)
    c = f.iloc[0]
    order = order_words(f, "policy")
    head = (
        f"The real engine on this machine, one thread, a ~20M-parameter Llama with random "
        f"weights, timed on its CPU clock (the engine thread's CPU seconds plus the gaps of "
        f"arrivals and calls, which are not slept): {int(c['requests'])} requests of the mixed workload at {c['rate']:g} "
        f"req/s, lengths x{real.LENGTH_SCALE:g}, call durations x{c['duration_scale']:g}, "
        f"{int(c['kv_blocks'])} KV blocks of {real.BLOCK} tokens; a fresh engine per run, "
        f"in this order (rounds split by |): {order}."
    )
    p = s.per_key
    lat = "; ".join(f"{k} {s.median_range(k, 'norm_latency_mean')}" for k in p.index)
    ratios = s.ratios.get("norm_latency_mean", [])
    paired = (
        f" vLLM/InferCept per round: {', '.join(f'{x:.2f}x' for x in ratios)}." if ratios else ""
    )
    work = "; ".join(f"{k} {p.at[k, 'recomputed_tokens_median']:,.0f}" for k in p.index)
    cpu = ""
    if "engine_cpu_s_median" in p:
        cpu = (
            " Engine CPU seconds (steps that ran a forward), median: "
            + "; ".join(f"{k} {p.at[k, 'engine_cpu_s_median']:.1f}" for k in p.index)
            + f". The engine had {f['cpu_share'].min():.0%}-{f['cpu_share'].max():.0%} of "
            "its core during its steps (CPU over wall seconds; other processes took the "
            "rest, which the CPU clock does not count)."
        )
    return (
        f"{head} Mean normalized latency (s/token), median (min-max) over each policy's "
        f"rounds: {lat}.{paired} Recomputed tokens, median: {work}.{cpu}"
    )


def profile_words(r: Results) -> str:
    """Which step profile InferCept's cost line was fitted to, where it was measured."""
    pinned = pinned_profile(r)
    if pinned is None:
        return ""
    c, profile = pinned
    return (
        f"InferCept's T_fwd line ({c['policy_a_ms']:.3g} ms/token + {c['policy_c_ms']:.3g} "
        f"ms, saturation {int(c['policy_saturation'])} tokens) is fitted to the profile "
        f"{profile}. The engine's own times are measured, not the profile's."
    )

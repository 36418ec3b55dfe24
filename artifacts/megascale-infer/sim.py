"""The paper-scale experiments, in the simulator (:mod:`.cost` on :mod:`core.sim.pingpong`)."""

from __future__ import annotations

from typing import Any

from core.sim.pingpong import EXPERT, pingpong_timeline, timeline_iteration_s

from .cost import (
    DisaggCostModel,
    Evaluation,
    closed_form_iteration_s,
    colocated_ep,
    colocated_tp,
    hides_communication,
    plan,
)
from .models import PRICES, spec

# Search grids of the planner, by name (point configs hold scalars only).
GRIDS: dict[str, dict[str, Any]] = {
    "small": {"tp_a": (1, 2, 4), "tp_e": (1, 2, 4), "n_a": range(1, 9), "m": (1, 2, 3, 4)},
    "paper": {"tp_a": (1, 2, 4, 8), "tp_e": (1, 2, 4, 8), "n_a": range(1, 17), "m": (1, 2, 3, 4)},
    "wide": {"tp_a": (1, 2, 4, 8), "tp_e": (1, 2, 4, 8), "n_a": range(1, 33), "m": (1, 2, 3, 4)},
}
TP_SIZES = (1, 2, 4, 8, 16)
EP_SIZES = (2, 4, 8, 16, 32)


def _cost(config: dict[str, Any]) -> DisaggCostModel:
    return DisaggCostModel(
        spec(config["model"]),
        config["attention_gpu"],
        config["expert_gpu"],
        context=config["context"],
        max_context=config["max_context"],
        prices=PRICES,
    )


def _disagg_row(e: Evaluation, system: str) -> dict[str, Any]:
    return {"system": system, **e.row()}


def run_deployment(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Best disaggregated plan (overall, per dollar, and with each ``m``) and the colocated TP
    and EP baselines at their best size, for one model on one GPU type (or a pair)."""
    cost = _cost(config)
    slo = config["slo_ms"] / 1e3
    grid = GRIDS[config["grid"]]
    best, found = plan(cost, slo_s=slo, max_b_a=config["max_b_a"], **grid)
    rows: list[dict[str, Any]] = []
    if best is not None:
        rows.append(_disagg_row(best, "disaggregated"))
        cheapest = max(found, key=lambda e: e.per_dollar)
        rows.append(_disagg_row(cheapest, "disaggregated (per $)"))
        for m in grid["m"]:
            with_m = [e for e in found if e.deployment.m == m]
            if with_m:
                rows.append(_disagg_row(max(with_m, key=lambda e: e.per_gpu), f"m={m}"))
    if config["attention_gpu"] == config["expert_gpu"]:
        for kind, sizes, fn in (("colocated-tp", TP_SIZES, colocated_tp),
                                ("colocated-ep", EP_SIZES, colocated_ep)):  # fmt: skip
            results = [fn(cost, n, slo_s=slo) for n in sizes]
            ok = [r for r in results if r.feasible]
            for label, key in (("", "per_gpu"), (" (per $)", "per_dollar")):
                if ok:
                    r = max(ok, key=lambda r: getattr(r, key))
                    rows.append(
                        {"system": kind + label, "tp_a": r.parallel, "batch": r.batch,
                         "iteration_ms": r.iteration_s * 1e3, "tokens_per_s": r.tokens_per_s,
                         "gpus": r.gpus, "per_gpu": r.per_gpu, "per_dollar": r.per_dollar}
                    )  # fmt: skip
    return rows


def run_pingpong(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The exact schedule of ``m`` micro-batches for ``T_a = T_e = 1`` and ``T_c = ratio``:
    its slots, its iteration time beside the paper's closed form, each side's busy share."""
    t_a = t_e = 1.0
    t_c, m, layers = config["tc_ratio"], config["m"], config["layers"]
    slots = pingpong_timeline(t_a, t_e, t_c, m, layers)
    sim = timeline_iteration_s(slots, t_c)
    closed = closed_form_iteration_s(t_a, t_e, t_c, m, layers)
    summary = {
        "iteration": sim,
        "closed_form": closed,
        "hides": hides_communication(t_a, t_e, t_c, m),
        "expert_busy": m * layers * t_e / sim,
        "per_microbatch_layer": sim / (m * layers),
    }
    return [
        {**summary, "side": s.side, "layer": s.layer, "micro_batch": s.micro_batch,
         "start": s.start, "end": s.end, "slot_is_expert": s.side == EXPERT}
        for s in slots
    ]  # fmt: skip

"""``python -m scripts.bench collectives``: the collective cost model against measured times.

Two parts:

1. gloo on this machine: 2 local ranks (:class:`core.dist.LocalGroup`, one torch thread each)
   time all-reduce, all-gather, all-to-all and broadcast of fp32 tensors over a range of sizes,
   in interleaved rounds (every collective and size once per round, rounds repeated); a round's
   sample is the mean of ``--repeats`` calls on rank 0, and the measured time the fastest round
   (the other jobs sharing this machine's 2 cores inflate the others: their median is printed
   beside it). Printed per point: the measured time, the shipped gloo model
   (:data:`core.sim.network.GLOO_LOOPBACK`) and its ratio model/measured, and the same for a
   link fitted to this run (``--fit`` prints the fitted constants to ship).
2. NVLink/InfiniBand from Vidur's NCCL tables (``data/reference/vidur-profiles/network``): the
   fitted links of :func:`core.sim.network.vidur_network` and the ratio model/measured per
   node, world size and message size (no GPU needed: it reads the shipped measurements).

``nbytes`` as :mod:`core.sim.network` defines it: the tensor for all-reduce and broadcast, the
gathered output for all-gather, what one rank sends for all-to-all. Options: ``--sizes``
(bytes, comma-separated), ``--rounds``, ``--repeats`` (calls timed per point and round),
``--quick`` (3 sizes, 2 rounds: for tests), ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import report as rep

BENCHMARK = "collectives"
DEFAULT_OUT = Path("results") / "bench"
DEFAULT_SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20]
QUICK_SIZES = [4 << 10, 256 << 10, 2 << 20]
GLOO_COLLECTIVES = ("all_reduce", "all_gather", "all_to_all", "broadcast")
VIDUR_SIZES = [64 << 10, 1 << 20, 16 << 20, 64 << 20]
# the shipped gloo model should be within this factor of the measurement from 64 KiB up
TARGET_FACTOR = 2.0


def build_parser(prog: str = "python -m scripts.bench collectives") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="message sizes in bytes, comma-separated (default 4 KiB .. 16 MiB)",
    )
    p.add_argument("--rounds", type=rep.positive_int, default=5, help="interleaved rounds (5)")
    p.add_argument(
        "--repeats", type=rep.positive_int, default=10, help="calls per point and round (10)"
    )
    p.add_argument("--quick", action="store_true", help="3 sizes, 2 rounds, 3 repeats (tests)")
    p.add_argument("--fit", action="store_true", help="print the gloo link fitted to this run")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (results/bench)")
    return p


def _measure(
    comm: Any, sizes: list[int], rounds: int, repeats: int
) -> dict[tuple[str, int], list[float]]:
    """On every rank: seconds per call of each (collective, size), one sample per round."""
    import torch
    import torch.distributed as dist

    world, group = comm.world_size, comm.group
    tensors = {}
    for n in sizes:
        elems = max(world, n // 4 // world * world)  # fp32, divisible by the world
        tensors[n] = (torch.ones(elems), torch.empty(elems), torch.ones(elems // world))

    def call(name: str, n: int) -> None:
        full, out, part = tensors[n]
        if name == "all_reduce":
            dist.all_reduce(full, group=group)
        elif name == "all_gather":
            dist.all_gather_single(out, part, group=group)
        elif name == "all_to_all":
            dist.all_to_all_single(out, full, group=group)
        else:
            dist.broadcast(full, src=0, group=group)

    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for n in sizes:
            for name in GLOO_COLLECTIVES:
                call(name, n)  # warm the connection for this size
                comm.barrier()
                t0 = time.perf_counter()
                for _ in range(repeats):
                    call(name, n)
                samples.setdefault((name, n), []).append((time.perf_counter() - t0) / repeats)
    return samples


def _gloo_part(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    from core.dist import LocalGroup
    from core.sim.network import GLOO_LOOPBACK, Measurement, fit_link, gloo_network

    rounds, repeats = (2, 3) if args.quick else (args.rounds, args.repeats)
    with LocalGroup(2, num_threads=1) as group:
        samples = group.run(_measure, sizes, rounds, repeats)[0]

    def nbytes(n: int) -> float:  # the fp32 tensor _measure made for size n
        return float(max(2, n // 4 // 2 * 2) * 4)

    points = {key: Measurement(key[0], 2, nbytes(key[1]), min(ts)) for key, ts in samples.items()}
    shipped = gloo_network()
    fitted_link = fit_link(
        replace(GLOO_LOOPBACK, source="fitted to this run"),
        list(points.values()),
        per_collective=True,
    )
    fitted = gloo_network(fitted_link)
    rows = []
    for key, m in sorted(points.items(), key=lambda kv: (kv[0][0], kv[1].nbytes)):
        model = shipped.seconds(m.collective, m.nbytes, m.world)
        refit = fitted.seconds(m.collective, m.nbytes, m.world)
        rows.append(
            {
                "collective": m.collective,
                "nbytes": int(m.nbytes),
                "measured_s": m.seconds,
                "median_s": statistics.median(samples[key]),
                "samples_s": samples[key],
                "model_s": model,
                "ratio": model / m.seconds,
                "fitted_ratio": refit / m.seconds,
            }
        )
    return {
        "rounds": rounds,
        "repeats": repeats,
        "points": rows,
        "shipped_link": _link_dict(GLOO_LOOPBACK),
        "fitted_link": _link_dict(fitted_link),
    }


def _link_dict(link: Any) -> dict[str, Any]:
    return {
        "name": link.name,
        "bandwidth": link.bandwidth,
        "efficiency": link.efficiency,
        "effective_bandwidth": link.effective_bandwidth,
        "hop_latency_s": link.hop_latency_s,
        "launch_s": link.launch_s,
        "collective_efficiency": dict(link.collective_efficiency),
        "collective_launch_s": dict(link.collective_launch_s),
    }


def _vidur_part() -> dict[str, Any]:
    from core.sim.network import VIDUR_NODES, NetworkModel, load_vidur_measurements, vidur_network

    out: dict[str, Any] = {}
    for node in VIDUR_NODES:
        net = vidur_network(node)
        rows = []
        measured = load_vidur_measurements(node)
        keys = sorted({(m.collective, m.world, g) for m, g in measured})
        for collective, world, per_node in keys:
            pts = {
                int(m.nbytes): m
                for m, g in measured
                if (m.collective, m.world, g) == (collective, world, per_node)
            }
            if per_node == 1:  # one GPU per node: the inter-node link alone
                assert net.inter is not None
                model = NetworkModel(net.inter, None, 2)
            else:
                model = replace(net, devices_per_node=per_node)
            for size in VIDUR_SIZES:
                nearest = min(pts, key=lambda s, size=size: abs(s - size))
                m = pts[nearest]
                t = model.seconds(m.collective, m.nbytes, m.world)
                rows.append(
                    {
                        "collective": collective,
                        "world": world,
                        "devices_per_node": per_node,
                        "nbytes": nearest,
                        "measured_s": m.seconds,
                        "model_s": t,
                        "ratio": t / m.seconds,
                    }
                )
        out[node] = {
            "intra": _link_dict(net.intra),
            "inter": _link_dict(net.inter) if net.inter else None,
            "points": rows,
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; returns the report (also written)."""
    started = time.perf_counter()
    sizes = QUICK_SIZES if args.quick and args.sizes is None else (args.sizes or DEFAULT_SIZES)
    prov = rep.provenance()
    gloo = _gloo_part(args, sizes)
    vidur = _vidur_part()
    large = [p["ratio"] for p in gloo["points"] if p["nbytes"] >= 64 << 10]
    worst = max((max(r, 1 / r) for r in large), default=None)
    targets = [
        rep.target(
            "gloo-model-within-2x",
            "the shipped gloo model within 2x of the measured time for every collective from "
            "64 KiB up (worst of model/measured and measured/model)",
            worst,
            "<=",
            TARGET_FACTOR,
            "x",
            reason=None if large else "no size >= 64 KiB measured",
        )
    ]
    config = {
        "sizes": sizes,
        "world": 2,
        "backend": "gloo",
        "threads_per_rank": 1,
        "collectives": list(GLOO_COLLECTIVES),
    }
    report = rep.make_report(
        BENCHMARK,
        config,
        {"gloo": gloo, "vidur": vidur},
        targets,
        prov,
        time.perf_counter() - started,
    )
    rep.write_json(Path(args.out) / f"{BENCHMARK}.json", report)
    return report


def _kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def render(report: dict[str, Any], fit: bool = False) -> str:
    g = report["results"]["gloo"]
    rows = [
        [
            p["collective"],
            _kib(p["nbytes"]),
            p["measured_s"] * 1e6,
            p["median_s"] * 1e6,
            p["model_s"] * 1e6,
            p["ratio"],
            p["fitted_ratio"],
        ]
        for p in g["points"]
    ]
    parts = [
        rep.format_table(
            [
                "collective",
                "size",
                "measured us",
                "median us",
                "model us",
                "model/measured",
                "refit/measured",
            ],
            rows,
            title=(
                f"gloo, 2 local ranks, fastest of {g['rounds']} interleaved rounds of "
                f"{g['repeats']} calls"
            ),
            formats=[None, None, ".1f", ".1f", ".1f", ".2f", ".2f"],
        )
    ]
    if fit:
        link = g["fitted_link"]
        parts.append(
            f"fitted gloo link (to ship as GLOO_LOOPBACK): bandwidth {link['bandwidth']:.3g} B/s, "
            f"hop_latency_s={link['hop_latency_s']:.3g}, efficiency per collective "
            f"{link['collective_efficiency']}, launch_s per collective "
            f"{link['collective_launch_s']}"
        )
    for node, v in report["results"]["vidur"].items():
        rows = [
            [
                p["collective"],
                p["world"],
                p["devices_per_node"],
                _kib(p["nbytes"]),
                p["measured_s"] * 1e6,
                p["model_s"] * 1e6,
                p["ratio"],
            ]
            for p in v["points"]
        ]
        intra, inter = v["intra"], v["inter"]
        title = (
            f"{node} (Vidur NCCL): intra {intra['effective_bandwidth'] / 1e9:.0f} GB/s achieved, "
            f"hop {intra['hop_latency_s'] * 1e6:.1f} us, launch {intra['launch_s'] * 1e6:.1f} us"
            + (
                f"; inter {inter['effective_bandwidth'] / 1e9:.1f} GB/s, "
                f"hop {inter['hop_latency_s'] * 1e6:.1f} us"
                if inter
                else ""
            )
        )
        parts.append(
            rep.format_table(
                ["collective", "ranks", "per node", "size", "measured us", "model us", "ratio"],
                rows,
                title=title,
                formats=[None, None, None, None, ".1f", ".1f", ".2f"],
            )
        )
    parts.append(rep.targets_table(report["targets"]))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report, fit=args.fit))
    print(f"\nwrote {Path(args.out) / f'{BENCHMARK}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

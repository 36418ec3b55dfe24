"""The engine benchmark (scripts/bench/engine.py): its pieces on synthetic inputs, the command
line, and one end-to-end ``--quick`` run (slow). Nothing here asserts on speed: a benchmark is
a measurement, and this machine is shared."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scripts.bench import BENCHMARKS
from scripts.bench import engine as eb
from scripts.bench import report as rep

ROOT = Path(__file__).resolve().parents[2]


# ---- command line ---------------------------------------------------------------------------


def test_help_lists_the_benchmarks():
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for name in BENCHMARKS:
        assert name in out.stdout


def test_unknown_benchmark_is_one_clear_error():
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice: 'nope'" in out.stderr


def test_engine_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as e:
        eb.main(["--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out
    for bad, message in (
        (["--dtype", "fp16"], "unknown dtype 'fp16'"),
        (["--parts", "offline,foo"], "unknown part(s) foo"),
        (["--requests", "0"], "must be >= 1"),
        (["--hf-batch-sizes", "8,x"], "not a comma-separated list"),
    ):
        with pytest.raises(SystemExit) as e:
            eb.main(bad)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_default_out_is_the_repository_results_folder():
    assert eb.DEFAULT_OUT == ROOT / "results" / "bench"


def test_guard_records_errors_and_unavailable_systems():
    def boom():
        raise ValueError("bad")

    def missing():
        raise eb.Unavailable("no continuous batching here")

    assert eb._guard(lambda: {"x": 1}) == {"status": "ok", "x": 1}
    err = eb._guard(boom)
    assert err["status"] == "error" and err["error"] == "ValueError: bad" and err["traceback"]
    assert eb._guard(missing) == {"status": "skipped", "reason": "no continuous batching here"}


def test_parse_dtypes():
    assert eb.parse_dtypes("fp32,bf16") == ("fp32", "bf16")
    assert eb.parse_dtypes(" bfloat16 , BF16,float32") == ("bf16", "fp32")
    with pytest.raises(argparse.ArgumentTypeError):
        eb.parse_dtypes(",")


def test_scale_from_args():
    args = eb.build_parser().parse_args(["--quick"])
    assert eb.scale_from_args(args) == eb.QUICK and eb.QUICK.dtypes == ("fp32",)
    args = eb.build_parser().parse_args(
        ["--dtype", "bf16", "--requests", "5", "--hf-batch-sizes", "2,4"]
    )
    s = eb.scale_from_args(args)
    assert (s.dtypes, s.n_requests, s.hf_batch_sizes) == (("bf16",), 5, (2, 4))
    assert eb.FULL.n_requests == 64 and eb.FULL.prompt_range == (32, 256)
    assert eb.FULL.output_range == (16, 128) and eb.FULL.hf_batch_sizes == (8, 16, 32, 64)
    assert eb.FULL.decode_batches == (1, 2, 4, 8, 16, 32, 64) and eb.FULL.ttft_prefix == 1024


# ---- workload -------------------------------------------------------------------------------


def test_workload_is_seeded_and_in_range():
    a = eb.make_workload(eb.FULL, 32000, seed=0)
    b = eb.make_workload(eb.FULL, 32000, seed=0)
    c = eb.make_workload(eb.FULL, 32000, seed=1)
    assert a.prompts == b.prompts and a.output_lens == b.output_lens
    assert a.prompts != c.prompts
    assert len(a.prompts) == 64
    assert all(32 <= n <= 256 for n in a.prompt_lens) and all(16 <= n <= 128 for n in a.output_lens)
    assert all(eb.FIRST_TOKEN_ID <= t < 32000 for p in a.prompts for t in p)
    d = a.describe()
    assert d["n_requests"] == 64 and d["output_tokens"] == a.useful_tokens == sum(a.output_lens)


# ---- scheduler-overhead measurement -----------------------------------------------------------


def _rec(n, total, fwd, wall=None, runner=None, module=0.0):
    return {
        "wall_s": wall or total,
        "runner_s": runner or fwd,
        "module_s": module,
        "stats_total_s": total,
        "stats_forward_s": fwd,
        "num_tokens": n,
        "num_seqs": n,
    }


def test_steady_steps_uses_engine_stats_when_present():
    recs = [_rec(1000, 1.0, 0.9), *[_rec(64, 0.1, 0.09) for _ in range(5)], _rec(30, 0.1, 0.09)]
    recs[0]["num_seqs"] = 64  # prefill step: 64 sequences but 1000 tokens
    steady, how = eb.steady_steps(recs, 64)
    assert len(steady) == 5 and "exactly 64" in how


def test_steady_steps_without_stats_takes_the_middle_half():
    recs = [{"wall_s": 1.0, "runner_s": 0.5 if i else 0.0, "module_s": 0.0} for i in range(9)]
    steady, how = eb.steady_steps(recs, 64)
    assert len(steady) == 4 and "middle half" in how  # 8 steps with a forward -> 2..5


def test_outside_share():
    steps = [_rec(64, 0.10, 0.09), _rec(64, 0.30, 0.27)]
    out = eb.outside_share(steps, "stats_total_s", "stats_forward_s")
    assert out["outside_share_pct"] == pytest.approx(10.0)
    assert out["mean_step_s"] == pytest.approx(0.2) and out["steps"] == 2
    with pytest.raises(ValueError):
        eb.outside_share([], "stats_total_s", "stats_forward_s")


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        time.sleep(0.002)
        return self.lin(x)

    def compute_logits(self, h):
        time.sleep(0.001)
        return h


class _Runner:
    def __init__(self):
        self.model = _Model()

    def execute(self, out):
        time.sleep(0.001)
        return self.model.compute_logits(self.model(torch.zeros(1, 4)))


class _FakeEngine:
    """Mimics core.engine.Engine: step() runs the runner and records last_step."""

    def __init__(self):
        self.runner = _Runner()
        self.last_step = None

    def step(self):
        t0 = time.perf_counter()
        time.sleep(0.001)  # "scheduling"
        f0 = time.perf_counter()
        self.runner.execute(None)
        fwd = time.perf_counter() - f0
        self.last_step = SimpleNamespace(
            total_s=time.perf_counter() - t0, forward_s=fwd, num_tokens=4, num_seqs=4
        )
        return []


def test_instrument_engine_times_steps_runner_and_module_then_restores():
    engine = _FakeEngine()
    with eb.instrument_engine(engine) as info:
        for _ in range(3):
            engine.step()
    assert info["runner_forward"] == "engine.runner.execute"
    assert info["module_forward"] == "_Model"
    assert len(info["steps"]) == 3
    for r in info["steps"]:
        assert r["wall_s"] >= r["runner_s"] >= r["model_s"] >= r["module_s"] >= 0.002
        assert (
            r["model_s"] == pytest.approx(r["module_s"] + r["logits_s"]) and r["logits_s"] >= 0.001
        )
        assert r["stats_total_s"] >= r["stats_forward_s"] > 0 and r["num_seqs"] == 4
    # everything is restored: no instance attributes left, no hooks
    assert "step" not in vars(engine) and "execute" not in vars(engine.runner)
    assert "compute_logits" not in vars(engine.runner.model)
    assert not engine.runner.model._forward_hooks and not engine.runner.model._forward_pre_hooks
    with pytest.raises(RuntimeError, match="no step"):
        with eb.instrument_engine(SimpleNamespace()):
            pass


# ---- roofline annotation and targets ----------------------------------------------------------


def _results(engine_status="ok"):
    eng = (
        {"status": "ok", "tokens_per_s": 60.0}
        if engine_status == "ok"
        else {"status": "skipped", "reason": "core.engine cannot be imported (x)"}
    )
    res = {
        "roofline": {"gemm_peak_flops": 1e11, "bandwidth_bytes_per_s": 1e10},
        "offline": {
            "workload": {"n_requests": 4, "prompt_tokens": 400, "output_tokens": 1000},
            "total_flops": 1e12,
            "hf_generate": {
                "status": "ok",
                "tokens_per_s": 20.0,
                "by_batch_size": {"8": {"status": "ok", "tokens_per_s": 20.0}},
            },
            "hf_generate_batch": {"status": "ok", "tokens_per_s": 30.0},
            "engine": eng,
            "engine_vs_hf_generate": 3.0 if engine_status == "ok" else None,
            "engine_vs_hf_generate_batch": 2.0 if engine_status == "ok" else None,
        },
        "decode": {
            "rows": [
                {
                    "batch": 1,
                    "flops_per_step": 1e8,
                    "bytes_per_step": 5e8,
                    "engine": {"status": "ok", "step_s": 0.1} if engine_status == "ok" else eng,
                    "hf_generate": {"status": "ok", "step_s": 0.2},
                    "engine_linear_only": {"status": "ok", "step_s": 0.08},
                }
            ]
        },
        "scheduler": {"status": "ok", "outside_share_pct": 4.0} if engine_status == "ok" else eng,
    }
    eb.annotate(res)
    return res


def test_annotate_computes_every_roofline_number():
    res = _results()
    off = res["offline"]
    assert off["roofline_time_s"] == pytest.approx(10.0)
    assert off["roofline_tokens_per_s"] == pytest.approx(100.0)
    assert off["engine"]["pct_of_roofline"] == pytest.approx(60.0)
    assert off["hf_generate"]["by_batch_size"]["8"]["pct_of_roofline"] == pytest.approx(20.0)
    row = res["decode"]["rows"][0]
    assert row["roofline_step_s"] == pytest.approx(0.05) and row["bound_by"] == "memory"
    assert row["engine"]["pct_of_roofline"] == pytest.approx(50.0)
    assert row["hf_generate"]["pct_of_roofline"] == pytest.approx(25.0)
    assert row["engine_linear_only"]["pct_of_roofline"] == pytest.approx(62.5)


def test_targets_pass_flags():
    targets = {t["id"]: t for t in eb.make_targets({"fp32": _results()}, eb.PARTS)}
    assert set(targets) == {f"fp32/{k}" for k in eb.TARGETS}
    status = {k: t["status"] for k, t in targets.items()}
    assert status == {
        "fp32/offline_vs_generate": "pass",  # 3.0 >= 2
        "fp32/offline_vs_generate_batch": "FAIL",  # 2.0 < 3
        "fp32/offline_roofline": "pass",  # 60% >= 60%
        "fp32/decode_b1_roofline": "FAIL",  # 50% < 60%
        "fp32/scheduler_share": "pass",  # 4% <= 10%
    }


def test_targets_without_the_engine_are_not_checked_with_the_reason():
    targets = eb.make_targets({"fp32": _results("skipped")}, eb.PARTS)
    assert all(t["passed"] is None for t in targets)
    assert all("core.engine cannot be imported" in t["reason"] for t in targets)
    targets = eb.make_targets({"fp32": {"roofline": {}}}, ("decode",))
    reasons = {t["id"].split("/")[1]: t["reason"] for t in targets}
    assert reasons["offline_roofline"] == "offline part not run"
    assert reasons["scheduler_share"] == "scheduler part not run"


def test_render_prints_every_section():
    res = _results()
    res["roofline"].update(
        gemm_best={"method": "torch.matmul", "m": 512, "k": 512, "n": 512, "when": "start"},
        bandwidth_best={"when": "end", "copy_bytes_per_s": 1e10, "sum_bytes_per_s": 9e9},
        measurements=[{"when": "start", "gemm_peak_flops": 1e11, "bandwidth_bytes_per_s": 1e10}],
    )
    res["decode"].update(context=128)
    report = {"results": {"fp32": res}, "targets": eb.make_targets({"fp32": res}, eb.PARTS)}
    text = eb.render(report)
    for needle in (
        "machine roofline",
        "offline throughput",
        "decode step",
        "targets",
        "3.00x / 2.00x",
    ):
        assert needle in text


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, capsys, restore_threads):
    """``--quick`` on one thread (the machine is shared): the HF parts must measure, the engine
    parts must measure when core.engine imports and be skipped with the reason otherwise."""
    t0 = time.perf_counter()
    assert eb.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert "targets (measured on this machine)" in printed

    report = json.loads((tmp_path / "engine.json").read_text())
    rep.validate_report(report)
    assert report["benchmark"] == "engine" and report["config"]["scale"]["name"] == "quick"
    prov = report["provenance"]
    assert prov["git"]["commit"] and prov["host"]["torch_threads"] == 1
    assert prov["host"]["cpu_count"] >= 1 and prov["packages"]["torch"]

    assert list(report["results"]) == ["fp32"]
    r = report["results"]["fp32"]
    roof = r["roofline"]
    assert roof["gemm_peak_flops"] > 0 and roof["bandwidth_bytes_per_s"] > 0
    assert [m["when"] for m in roof["measurements"]] == ["start", "end"]

    off = r["offline"]
    assert off["hf_generate"]["status"] == "ok", off["hf_generate"]
    assert off["hf_generate"]["best_batch_size"] in eb.QUICK.hf_batch_sizes
    assert off["hf_generate_batch"]["status"] == "ok", off["hf_generate_batch"]
    assert off["hf_generate_batch"]["output_lengths_ok"]
    for entry in (off["hf_generate"], off["hf_generate_batch"]):
        assert entry["tokens_per_s"] > 0 and entry["pct_of_roofline"] > 0
    assert (
        off["greedy_agreement"]["hf_generate_vs_hf_generate_batch"]["first_token_match_fraction"]
        > 0
    )
    for row in r["decode"]["rows"]:
        assert row["hf_generate"]["status"] == "ok", row["hf_generate"]
        assert row["hf_generate"]["step_s"] > 0 and row["roofline_step_s"] > 0

    targets = {t["id"]: t for t in report["targets"]}
    assert len(targets) == len(eb.TARGETS)
    _, _, reason = eb.import_engine()
    engine_entries = [
        off["engine"],
        *(row["engine"] for row in r["decode"]["rows"]),
        *(row["engine_linear_only"] for row in r["decode"]["rows"]),
        r["scheduler"],
        r["ttft"],
    ]
    if reason is None:
        for entry in engine_entries:
            assert entry["status"] == "ok", entry
        assert off["engine"]["output_lengths_ok"]
        for row in r["decode"]["rows"]:  # the linears alone take less than the whole step
            assert 0 < row["engine_linear_only"]["step_s"] < row["engine"]["step_s"]
        assert r["scheduler"]["share_from"] == "engine_stats"
        assert 0 <= r["scheduler"]["outside_share_pct"] <= 100
        assert r["ttft"]["hit_num_cached_tokens"][0] >= eb.QUICK.ttft_prefix - eb.QUICK.block_size
        assert all(t["measured"] is not None for t in targets.values())
    else:
        assert all(e["status"] == "skipped" and e["reason"] == reason for e in engine_entries)
        assert all(t["passed"] is None for t in targets.values())
    print(f"quick run took {elapsed:.1f} s")  # shown with -rP; never asserted (shared machine)


@pytest.mark.slow
def test_without_core_engine_the_engine_parts_are_skipped(tmp_path, monkeypatch, restore_threads):
    """When core.engine cannot be imported, its measurements are skipped with the import error
    as the reason, its targets are not checked, and the transformers parts still run."""
    monkeypatch.setitem(sys.modules, "core.engine", None)  # makes the import fail
    _, _, reason = eb.import_engine()
    assert reason and reason.startswith("core.engine cannot be imported")
    args = ["--quick", "--threads", "1", "--parts", "decode,scheduler,ttft", "--out", str(tmp_path)]
    assert eb.main(args) == 0
    report = json.loads((tmp_path / "engine.json").read_text())
    r = report["results"]["fp32"]
    assert report["provenance"]["engine"] == {"importable": False, "reason": reason}
    assert "offline" not in r
    for row in r["decode"]["rows"]:
        assert row["hf_generate"]["status"] == "ok"
        assert row["engine"] == {"status": "skipped", "reason": reason}
    assert r["scheduler"] == r["ttft"] == {"status": "skipped", "reason": reason}
    reasons = {t["id"].split("/")[1]: t["reason"] for t in report["targets"]}
    assert all(t["passed"] is None for t in report["targets"])
    assert reasons["offline_roofline"] == "offline part not run"
    assert reasons["decode_b1_roofline"] == reasons["scheduler_share"] == reason

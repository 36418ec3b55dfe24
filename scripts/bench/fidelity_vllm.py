"""Fidelity against an engine we did not write: vLLM's CPU build, predicted by our simulator.

1. **Calibration on vLLM's own steps.** :class:`VllmEngine` makes a worker process running vLLM
   (``peer_workers/vllm_steps.py``, in the cached peer venv) look like our engine to
   :class:`scripts.calibrate.measure.Calibrator`, so the very same calibration procedure crafts
   fixed-composition batches (prefill cells, decode cells, mixed steps, unequal decode
   contexts, several chunks) through vLLM's offline engine, one ``LLMEngine.step()`` at a time,
   steering only its token budget and sequence limit. Each step is timed inside the worker;
   its composition is read from vLLM's ``SchedulerOutput`` (:func:`composition`) and checked
   against the one asked for. :func:`scripts.calibrate.fit.fit_tables` turns the samples into
   a :class:`core.sim.profiled.ProfiledCostModel` of vLLM on this machine.
2. **vLLM serving streams.** Poisson streams of the Azure conversation requests (lengths scaled
   as for our engine) are served by vLLM in wall time inside the worker (requests added at
   their arrival, one ``step()`` after another), each stream twice: the second run is the
   noise floor. The worker times every step and probes the machine's speed in idle waits.
3. **The prediction.** Our simulator with our scheduler configured as vLLM's (token budget,
   sequence limit, chunked prefill, prefix caching, block size, the KV blocks vLLM allocated)
   and the vLLM profile, scaled by the anchors (reference steps through vLLM against the
   profile) taken right after the calibration and after every stream.

The worker's probe (a fixed matmul) runs every :data:`PROBE_EVERY` calibration steps and in
the replays' idle waits; it gives the probe-corrected step errors reported beside.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scripts.calibrate import EngineSettings, Grid
from scripts.calibrate.measure import Calibrator

from .fidelity_steps import Drift, StepRecord

WORKER = "vllm_steps.py"
PROBE_EVERY = 24
RAW_KEPT = 60
VLLM_SETTINGS = EngineSettings(
    block_size=32,  # vLLM's CPU attention takes multiples of 32
    num_kv_blocks=2048,  # 65,536 tokens; the worker sizes vLLM's cache in bytes from this
    max_num_batched_tokens=2048,
    max_num_seqs=64,
    max_model_len=2048,
    enable_prefix_caching=True,
)
"""vLLM as the benchmark configures it (and our scheduler in the simulation): its own defaults
for chunked prefill and prefix caching (both on), a 2,048-token step budget, 64 sequences."""
VLLM_GRID = Grid(
    prefill_tokens=(1, 16, 64, 256, 1024),
    prefill_contexts=(0, 256, 1024),
    decode_batches=(1, 4, 16, 32),  # mixed cells add one sequence: <= vLLM's 64
    decode_contexts=(16, 256, 1024),
    repeats=2,
    warmup=1,
    max_decode_kv_tokens=8192,
    chunk_cells=((64, 2), (256, 4)),
)
"""Smaller than our engine's calibration grid: vLLM's steps cost more on this machine (its
per-step overhead), and each cell is a pipe round trip. Step compositions beyond it (longer
prefills, larger batches) are extrapolated by the profiled model."""
QUICK_VLLM_GRID = Grid(
    prefill_tokens=(1, 16, 64),
    prefill_contexts=(0, 64),
    decode_batches=(1, 2, 4),
    decode_contexts=(16, 96),
    repeats=1,
    warmup=1,
    chunk_cells=((32, 2),),
)


class VllmRecordError(ValueError):
    """A step record from the vLLM worker that cannot be read (the message names the step and
    the value)."""


def composition(
    record: dict[str, Any], where: str = "step"
) -> tuple[list[tuple[int, int]], list[int]]:
    """``(prefill chunks, decode contexts)`` of one vLLM step record, in the convention of
    :func:`core.sim.cost.chunks_of`: a request scheduled for one token after ``k > 0``
    computed ones decodes at context ``k``; any other scheduled request is a prefill chunk
    ``(tokens, k)`` (``k`` includes a prefix-cache hit). Requests come in the record's order:
    new ones first, then the running ones."""
    pre: list[tuple[int, int]] = []
    dec: list[int] = []
    for part in ("new", "cached"):
        rows = record.get(part)
        if not isinstance(rows, list):
            raise VllmRecordError(f"{where}: '{part}' must be a list, got {rows!r}")
        for row in rows:
            ok = (
                isinstance(row, list)
                and len(row) == 3
                and all(isinstance(x, int) and not isinstance(x, bool) for x in row[1:])
                and row[1] >= 0
                and row[2] >= 1
            )
            if not ok:
                raise VllmRecordError(
                    f"{where}: '{part}' entry {row!r} is not [request id, computed >= 0, "
                    "scheduled >= 1]"
                )
            _, k, n = row
            if n == 1 and k > 0:
                dec.append(k)
            else:
                pre.append((n, k))
    return pre, dec


def parse_steps(
    records: Sequence[dict[str, Any]], run: str = "", offset: float = 0.0
) -> list[StepRecord]:
    """The worker's step records as :class:`StepRecord` (``start`` shifted by ``offset``);
    :class:`VllmRecordError` names the first bad one."""
    out = []
    for i, rec in enumerate(records):
        where = f"{run or 'vllm'} step {i}"
        if not isinstance(rec, dict):
            raise VllmRecordError(f"{where}: not an object: {rec!r}")
        try:
            start, secs, cpu = (float(rec[k]) for k in ("start", "seconds", "cpu_seconds"))
        except (KeyError, TypeError, ValueError):
            raise VllmRecordError(
                f"{where}: needs numbers 'start', 'seconds', 'cpu_seconds', got {rec!r}"
            ) from None
        if not (math.isfinite(secs) and secs >= 0):
            raise VllmRecordError(f"{where}: seconds must be a finite number >= 0, got {secs}")
        pre, dec = composition(rec, where)
        out.append(StepRecord(start + offset, secs, cpu, tuple(pre), tuple(dec), run))
    return out


def request_records(reply: dict[str, Any], prompt_lens: dict[str, int]) -> list[Any]:
    """:class:`core.metrics.RequestRecord` of each request of a worker ``replay`` reply."""
    from core.metrics import RequestRecord

    out = []
    for r in reply["requests"]:
        times = tuple(float(t) for t in r["token_times"])
        fin = r.get("finish")
        out.append(
            RequestRecord(
                request_id=str(r["id"]),
                arrival=float(r["arrival"]),
                first_token=times[0] if times else None,
                finish=None if fin is None else float(fin),
                token_times=times,
                prompt_tokens=prompt_lens[str(r["id"])],
                output_tokens=len(times),
                finish_reason="length" if fin is not None else None,
            )
        )
    return out


# ---- vLLM behind the calibration's engine interface ---------------------------------------


class _Req:
    """What the calibration reads of a request, kept up to date from the worker's replies."""

    def __init__(self, rid: str, prompt_len: int) -> None:
        self.request_id = rid
        self.num_computed_tokens = 0
        self.tokens = prompt_len
        self.finished = False
        self.error: str | None = None

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.finished


class _Runner:
    def execute(self, out: Any) -> None:  # the calibration wraps this to see each step
        return None


class VllmEngine:
    """vLLM in a worker process, shaped like :class:`core.engine.Engine` as far as
    :class:`~scripts.calibrate.measure.Calibrator` uses it: ``add_request``, ``step``,
    ``abort``, ``scheduler.config`` (budget and sequence limit sent with every step),
    ``scheduler.running``/``waiting`` (from the worker's counts), ``runner.execute`` (called
    with the step's composition). :attr:`last_record` is the worker's record of the last step
    (None if nothing ran); every :data:`PROBE_EVERY` steps the worker's probe runs first and
    lands in :attr:`probes` (``(perf_counter time, seconds)``)."""

    def __init__(
        self, call: Callable[[dict[str, Any]], dict[str, Any]], settings: EngineSettings
    ) -> None:
        self.call = call
        self.scheduler = SimpleNamespace(
            config=SimpleNamespace(
                max_num_batched_tokens=settings.max_num_batched_tokens,
                max_num_seqs=settings.max_num_seqs,
            ),
            running=[],
            waiting=[],
        )
        self.runner = _Runner()
        self.requests: dict[str, _Req] = {}
        self.last_record: dict[str, Any] | None = None
        self.probes: list[tuple[float, float]] = []
        self.steps = 0
        self.replies: list[dict[str, Any]] = []  # the first RAW_KEPT step replies, as sent

    def _counts(self, reply: dict[str, Any]) -> None:
        self.scheduler.running = [None] * int(reply["running"])
        self.scheduler.waiting = [None] * int(reply["waiting"])

    def add_request(self, rid: str, tokens: list[int], sampling: Any) -> _Req:
        req = _Req(rid, len(tokens))
        self.requests[rid] = req
        self._counts(
            self.call(
                {
                    "cmd": "add",
                    "requests": [{"id": rid, "prompt": tokens, "max_tokens": sampling.max_tokens}],
                }
            )
        )
        return req

    def probe(self) -> None:
        t = time.perf_counter()
        s = float(self.call({"cmd": "probe"})["seconds"])
        self.probes.append((t, s))

    def step(self) -> list[_Req]:
        if self.steps % PROBE_EVERY == 0:
            self.probe()
        self.steps += 1
        cfg = self.scheduler.config
        reply = self.call(
            {"cmd": "step", "budget": cfg.max_num_batched_tokens, "seqs": cfg.max_num_seqs}
        )
        if len(self.replies) < RAW_KEPT:
            self.replies.append(reply)
        self._counts(reply)
        done = []
        for rid, st in reply["requests"].items():
            req = self.requests.get(rid)
            if req is None:
                continue
            if "computed" in st:
                req.num_computed_tokens, req.tokens = int(st["computed"]), int(st["tokens"])
            if st.get("finished") and not req.finished:
                req.finished = True
                req.num_computed_tokens = req.tokens  # nothing left to compute
                done.append(req)
        self.last_record = rec = reply.get("record")
        if rec is not None:
            pre, dec = composition(rec, f"calibration step {self.steps}")
            chunks = [SimpleNamespace(num_tokens=n, start=k) for n, k in pre]
            chunks += [SimpleNamespace(num_tokens=1, start=k) for k in dec]
            self.runner.execute(SimpleNamespace(chunks=chunks))
        return done

    def abort(self, rid: str) -> None:
        self._counts(self.call({"cmd": "abort", "ids": [rid]}))
        req = self.requests.get(rid)
        if req is not None:
            req.finished = True


class VllmCalibrator(Calibrator):
    """The calibration's procedure on :class:`VllmEngine`: a step's seconds are the worker's
    own timing of ``LLMEngine.step()`` (no pipe round trip in them)."""

    def step(self) -> tuple[float, list[tuple[int, int]], list[int]]:
        self._last = None
        self.engine.step()
        rec = self.engine.last_record
        self._last = None
        if rec is None:
            self.last_cpu = 0.0
            return 0.0, [], []
        self.last_cpu = float(rec["cpu_seconds"])
        pre, dec = composition(rec)
        return float(rec["seconds"]), pre, dec


def calibrate_vllm(
    call: Callable[[dict[str, Any]], dict[str, Any]],
    model_cfg: dict[str, Any],
    settings: EngineSettings,
    grid: Grid,
    seed: int,
    info: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, Any], list[tuple[float, float]], list[dict[str, Any]], VllmCalibrator]:
    """A step profile of vLLM (the ``servelab.step-profile/1`` document), the probe samples
    taken during the calibration, the worker's first step replies as it sent them, and the
    calibrator (it times reference steps later: the anchors)."""
    from tqdm.auto import tqdm

    from core.sim.profiled import PROFILE_SCHEMA, ProfiledCostModel
    from scripts.bench.report import provenance
    from scripts.calibrate.fit import fit_tables
    from scripts.calibrate.measure import _check_errors, _cpu_share, _utc_now, expected_steps

    engine = VllmEngine(call, settings)
    llm = SimpleNamespace(engine=engine, config=SimpleNamespace(vocab_size=model_cfg["vocab_size"]))
    started = time.perf_counter()
    bar = tqdm(
        total=expected_steps(grid, settings),
        desc="calibrate vLLM",
        unit="step",
        disable=not progress,
    )
    # no re-measuring of steps that waited for a core: on a loaded machine most do, and the
    # fit then uses them all; the worker's CPU time per step is kept with each sample
    cal = VllmCalibrator(llm, settings, grid, seed, bar, cpu_filter=False)
    phases = cal.run_phases()
    engine.probe()
    bar.close()
    tables, notes = fit_tables([s for s in cal.samples if s["cell"][0] != "check"], grid.axes())
    profile: dict[str, Any] = {
        "schema": PROFILE_SCHEMA,
        "created": _utc_now(),
        "device": info,
        "model": {"name": "tiny-llama-20m (HF checkpoint, served by vLLM)", "config": model_cfg},
        "dtype": "float32",
        "threads": int(info.get("threads", 1)),
        "torch_version": info.get("torch_version"),
        "engine": settings.to_dict(),
        "system": "vllm",
        "decode_context": "max",
        "calibration": {
            "what": "seconds of one vLLM LLMEngine.step() (schedule, forward, sample, update, "
            "output processing), timed inside the worker process",
            "cpu_share": _cpu_share(cal.samples),
            "grid": grid.to_dict(),
            "seed": seed,
            "phases_s": phases,
            "elapsed_s": round(time.perf_counter() - started, 3),
            "notes": notes,
        },
        "grid": grid.axes(),
        "tables": tables,
        "checks": {},
        "samples": cal.samples,
        "provenance": provenance(),
    }
    profile["checks"] = _check_errors(
        ProfiledCostModel(profile, source="vllm calibration"), cal.samples
    )
    return profile, engine.probes, engine.replies, cal


# ---- the benchmark part ------------------------------------------------------------------


def simulate_as_vllm(
    cost: Any, reqs: Sequence[Any], num_kv_blocks: int, vocab: int
) -> tuple[list[Any], list[StepRecord]]:
    """``reqs`` through our simulator with our scheduler configured as vLLM's: the request
    records and every simulated step (step by step, so each one is seen)."""
    from core.metrics import RequestRecord
    from core.sched import SchedulerConfig
    from core.sim import ReplicaConfig, Simulator

    from .fidelity_steps import StepRecorderCost

    s = VLLM_SETTINGS
    rec_cost = StepRecorderCost(cost)
    replica = ReplicaConfig(
        rec_cost,
        num_kv_blocks=num_kv_blocks,
        block_size=s.block_size,
        scheduler=SchedulerConfig(
            max_num_batched_tokens=s.max_num_batched_tokens,
            max_num_seqs=s.max_num_seqs,
            max_model_len=s.max_model_len,
            enable_chunked_prefill=True,
            vocab_size=vocab,
        ),
        prefix_cache="block" if s.enable_prefix_caching else "none",
    )
    res = Simulator([replica], fast_forward=False).run(reqs)
    return [RequestRecord.from_request(r) for r in res.requests], rec_cost.records


def scheduling_summary(steps: Sequence[StepRecord]) -> dict[str, Any]:
    """How a run batched: steps by kind, mean sequences and tokens per step, mean prefill
    chunks per step with a prefill, the largest batch."""
    if not steps:
        return {"steps": 0}
    kinds = {k: sum(1 for s in steps if s.kind == k) for k in ("prefill", "decode", "mixed")}
    with_pre = [s for s in steps if s.prefill]
    return {
        "steps": len(steps),
        "by_kind": kinds,
        "mean_sequences": statistics.fmean(len(s.prefill) + len(s.decode) for s in steps),
        "mean_tokens": statistics.fmean(
            sum(n for n, _ in s.prefill) + len(s.decode) for s in steps
        ),
        "mean_prefill_chunks": statistics.fmean(len(s.prefill) for s in with_pre)
        if with_pre
        else 0.0,
        "max_sequences": max(len(s.prefill) + len(s.decode) for s in steps),
        "prefill_tokens": sum(n for s in steps for n, _ in s.prefill),
        "decode_tokens": sum(len(s.decode) for s in steps),
    }


def hf_checkpoint(model_cfg: dict[str, Any], folder: Path, seed: int) -> Path:
    """A random-initialized HF Llama checkpoint of ``model_cfg`` in ``folder`` (vLLM loads it;
    the weights do not matter for timing: outputs ignore EOS)."""
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**model_cfg)).save_pretrained(folder)
    return folder


def drift_of(
    calibration_probes: Sequence[tuple[float, float]], later: Sequence[tuple[float, float]]
) -> Drift:
    """The drift of vLLM's machine: the reference is the median probe of the calibration."""
    ref = statistics.median(s for _, s in calibration_probes)
    return Drift(reference_s=ref, samples=[*calibration_probes, *later])

"""How the calibration produces each kind of step on the real engine, and times it.

Every measured step is one ``Engine.step()`` timed with ``time.perf_counter`` around it (the
process's CPU time is stored too: less CPU than wall time with one thread means the process
waited for a core, e.g. for other work on the machine). The composition the scheduler actually
ran (prefill chunks ``(tokens, context)`` and decode contexts, read from the runner's input) is
stored with the time, and a step whose composition is not the one asked for stops the
calibration (a bug, never a silent wrong cell). Prompts are
random token ids (seeded), so no two requests share a prefix.

The scheduler decides what a step runs; the calibration steers it only through its token
budget and sequence limit, set for the step and restored after (they decide what is scheduled,
not how long it takes):

- **prefill** ``(n, c)``: a request of ``c + n`` tokens; with ``c > 0`` one unrecorded step with
  a budget of ``c`` computes its first ``c`` tokens, then the recorded step has a budget of
  ``n``: one chunk of ``n`` tokens after ``c`` cached. The request samples its only output
  token in that step and finishes.
- **decode** ``(b, L)``: ``b`` requests are prefilled (unrecorded, a large budget) with prompts
  short enough that, once all decode, their longest context has not passed
  ``L - (repeats - 1) // 2 - warmup``; unrecorded steps bring it there; then ``warmup``
  unrecorded and ``repeats`` recorded pure-decode steps, so the middle step has the longest
  context ``L``. The requests are then aborted.
- **mixed** ``(n, b)``: ``b`` requests decoding from context ``L0``; before each step a new
  request of ``n`` tokens arrives (one output token), so every step is ``b`` decodes plus one
  chunk of ``n`` tokens at context 0. The decode contexts grow by one per step; the fit
  corrects each sample back to ``L0`` with the decode table.
- **decode-mix**: decode batches with unequal contexts (one long among short ones, half long),
  recorded like decode cells: how unequal contexts combine.
- **chunks** ``(n, p)``: ``p`` requests of ``n / p`` tokens prefilled in one step.
- **checks**: compositions the tables do not contain, to test how they combine: a decode
  batch with spread contexts, decodes with a prefill chunk that has cached context, decodes
  with two prefill chunks. Not used by the fit; the profile reports the model's error on them.

Cells are visited in a seeded random order, pass after pass (``warmup`` unrecorded passes
first), so slow drift and bursts of load from other processes spread over all cells instead of
biasing a few.

Other work on the machine: with one torch thread on a CPU, a step during which the process got
less than 90% of a core (CPU time over wall time) waited for a core; it is stored marked
``disturbed`` and measured again (a decode cell takes more steps), up to 4 times. The fit uses
the undisturbed samples of a cell when it has any. The profile is then what the engine costs
on this machine when it has its core, and says how often it did not
(``calibration.disturbed_filter``).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.sim.cost import chunks_of
from core.sim.profiled import PROFILE_SCHEMA, ProfiledCostModel

from . import EngineSettings, Grid, build_llm, device_info, model_config
from .fit import fit_tables

FIRST_TOKEN_ID = 3  # prompts avoid the special ids


class CalibrationError(RuntimeError):
    """The engine did not run the step the calibration asked for (the message says which)."""


def prefill_cells(grid: Grid, settings: EngineSettings) -> list[tuple[int, int]]:
    """The ``(tokens, context)`` prefill cells that fit the context limit (the others are
    extrapolated by the fit)."""
    lim = settings.max_model_len
    return [(n, c) for n in grid.prefill_tokens for c in grid.prefill_contexts if n + c < lim]


def decode_cells(grid: Grid) -> list[tuple[int, int]]:
    """The ``(batch, context)`` decode cells measured: the first two contexts of every batch,
    the others while batch x context stays within ``max_decode_kv_tokens``."""
    return [
        (b, L)
        for b in grid.decode_batches
        for i, L in enumerate(grid.decode_contexts)
        if i < 2 or b * L <= grid.max_decode_kv_tokens
    ]


def mix_cells(grid: Grid) -> list[tuple[int, str, list[int]]]:
    """``(batch, name, contexts)`` of the decode batches with unequal contexts: a middle and a
    large batch of the grid, with one long context (the third grid context) among short ones
    (the first), and with half of them long."""
    B, L = grid.decode_batches, grid.decode_contexts
    lo, hi = L[0], L[min(2, len(L) - 1)]
    out = []
    for b in sorted({B[len(B) // 2], B[-2] if len(B) > 2 else B[-1]}):
        if b >= 2:
            out.append((b, "one-long", [lo] * (b - 1) + [hi]))
            out.append((b, "half-long", [lo] * (b // 2) + [hi] * (b - b // 2)))
    return out


def chunk_cells(grid: Grid) -> list[tuple[int, int]]:
    return [(n, p) for n, p in grid.chunk_cells if p >= 2 and n % p == 0 and n // p >= 2]


DISTURBED_CPU_SHARE = 0.9
"""With one torch thread on a CPU, a step whose process CPU time is below this share of its
wall time waited for a core (other work on the machine): it is marked ``disturbed`` and
measured again (up to ``RETRIES`` times). On a quiet machine the share is ~1.0; under
contention it drops to ~0.3-0.6, so the two are far apart."""
RETRIES = 4


class Calibrator:
    """Drives one engine (``llm.engine``) through the calibration steps; :attr:`samples`
    collects the recorded ones (the ``samples`` of a profile). ``cpu_filter``: mark and repeat
    disturbed steps (see :data:`DISTURBED_CPU_SHARE`; only meaningful with one thread on a
    CPU)."""

    def __init__(
        self,
        llm: Any,
        settings: EngineSettings,
        grid: Grid,
        seed: int,
        bar: Any = None,
        cpu_filter: bool = False,
    ) -> None:
        self.llm = llm
        self.engine = llm.engine
        self.sched = self.engine.scheduler
        self.settings = settings
        self.grid = grid
        self.rng = np.random.default_rng(seed)
        self.vocab = int(llm.config.vocab_size)
        self.samples: list[dict[str, Any]] = []
        self.bar = bar
        self.cpu_filter = cpu_filter
        self._ids = itertools.count()
        self._last: Any = None
        self.last_cpu = 0.0
        runner = self.engine.runner
        execute = runner.execute

        def recording_execute(out: Any) -> Any:  # keep what the scheduler ran
            self._last = out
            return execute(out)

        runner.execute = recording_execute

    # ---- primitives --------------------------------------------------------------------------

    def add(self, prompt_len: int, max_tokens: int) -> Any:
        from core.engine import SamplingParams

        rid = f"cal-{next(self._ids)}"
        tokens = self.rng.integers(FIRST_TOKEN_ID, self.vocab, size=int(prompt_len)).tolist()
        req = self.engine.add_request(
            rid,
            tokens,
            SamplingParams(temperature=0.0, max_tokens=int(max_tokens), ignore_eos=True),
        )
        if req.is_finished:
            raise CalibrationError(
                f"request of {prompt_len} + {max_tokens} tokens was rejected: {req.error}"
            )
        return req

    @contextlib.contextmanager
    def limits(self, budget: int | None = None, seqs: int | None = None) -> Iterator[None]:
        """Set the scheduler's token budget and sequence limit for the steps inside."""
        cfg = self.sched.config
        saved = cfg.max_num_batched_tokens, cfg.max_num_seqs
        if budget is not None:
            cfg.max_num_batched_tokens = int(budget)
        if seqs is not None:
            cfg.max_num_seqs = int(seqs)
        try:
            yield
        finally:
            cfg.max_num_batched_tokens, cfg.max_num_seqs = saved

    def step(self) -> tuple[float, list[tuple[int, int]], list[int]]:
        """One timed engine step: seconds, its prefill chunks and its decode contexts."""
        self._last = None
        c0, t0 = time.process_time(), time.perf_counter()
        self.engine.step()
        dt = time.perf_counter() - t0
        self.last_cpu = time.process_time() - c0
        if self._last is None:
            return dt, [], []
        prefill, decode = chunks_of(self._last)
        self._last = None
        return dt, prefill, decode

    def disturbed(self, dt: float) -> bool:
        """Whether the step just taken waited for a core (see :data:`DISTURBED_CPU_SHARE`)."""
        return self.cpu_filter and self.last_cpu < DISTURBED_CPU_SHARE * dt

    def record(
        self, cell: list[Any], dt: float, prefill: list[tuple[int, int]], decode: list[int]
    ) -> bool:
        """Store the step just taken; whether it was disturbed."""
        bad = self.disturbed(dt)
        self.samples.append(
            {
                "cell": cell,
                "prefill": [list(c) for c in prefill],
                "decode": list(decode),
                "seconds": dt,
                "cpu_seconds": self.last_cpu,
                "disturbed": bad,
            }
        )
        return bad

    def measure(
        self, cell: list[Any], run_once: Callable[[], tuple[float, list, list]], recorded: bool
    ) -> None:
        """``run_once()`` (set up and take one step of ``cell``); when ``recorded``, store it
        and take it again while it was disturbed, up to :data:`RETRIES` times."""
        for attempt in range(1 + (RETRIES if recorded else 0)):
            dt, pre, dec = run_once()
            if not recorded or not self.record(cell, dt, pre, dec) or attempt == RETRIES:
                break
        if recorded and self.bar is not None:
            self.bar.update(1)

    def abort_all(self, reqs: Sequence[Any]) -> None:
        for r in reqs:
            self.engine.abort(r.request_id)
        if self.sched.running or self.sched.waiting:
            raise CalibrationError("requests remain after a calibration cell")

    def start_decodes(self, batch: int, context: int, extra_steps: int) -> list[Any]:
        """``batch`` requests, all decoding, the longest context of the next step exactly
        ``context`` (when the prefill allows: see the module doc), with output room for
        ``extra_steps`` more steps."""
        big = max(2048, self.settings.max_num_batched_tokens)
        p = max(1, context - math.ceil(batch * context / big) - 1)
        room = context - p + extra_steps + 8
        if p + room >= self.settings.max_model_len:
            raise CalibrationError(
                f"decode context {context} + {extra_steps} steps does not fit "
                f"max_model_len={self.settings.max_model_len}"
            )
        reqs = [self.add(p, room) for _ in range(batch)]
        with self.limits(budget=big, seqs=max(batch, self.settings.max_num_seqs)):
            while True:
                decoding = all(r.num_uncomputed_tokens == 1 for r in reqs)
                if decoding and max(r.num_computed_tokens for r in reqs) >= context:
                    break
                self.step()
        return reqs

    # ---- phases ------------------------------------------------------------------------------

    def passes(self) -> range:
        return range(self.grid.warmup + self.grid.repeats)

    def measure_prefill(self) -> None:
        cells = prefill_cells(self.grid, self.settings)

        def once(n: int, c: int) -> tuple[float, list, list]:
            req = self.add(c + n, 1)
            if c:
                with self.limits(budget=c):
                    self.step()
            with self.limits(budget=n):
                dt, pre, dec = self.step()
            # one token after a cached context is what a decode is (chunks_of says so)
            want = ([], [c]) if n == 1 and c else ([(n, c)], [])
            if (pre, dec) != want or not req.is_finished:
                raise CalibrationError(
                    f"prefill cell ({n}, {c}) ran prefill {pre}, decode {len(dec)}"
                )
            return dt, pre, dec

        for rep in self.passes():
            for k in self.rng.permutation(len(cells)):
                n, c = cells[k]
                self.measure(
                    ["prefill", n, c], lambda n=n, c=c: once(n, c), rep >= self.grid.warmup
                )

    def decode_steps(self, cell: list[Any], reqs: Sequence[Any]) -> None:
        """Unrecorded warm-up steps, then recorded pure-decode steps of ``reqs`` until
        ``repeats`` undisturbed ones (at most ``repeats * (1 + RETRIES)``)."""
        g = self.grid
        warm, reps = max(1, g.warmup), g.repeats
        b = len(reqs)
        kept = taken = 0
        with self.limits(seqs=max(b, self.settings.max_num_seqs)):
            for k in range(warm + reps * (1 + RETRIES)):
                dt, pre, dec = self.step()
                if pre or len(dec) != b:
                    raise CalibrationError(
                        f"decode cell {cell} ran prefill {pre}, {len(dec)} decodes"
                    )
                if k < warm:
                    continue
                taken += 1
                kept += not self.record(cell, dt, pre, dec)
                if kept == reps or (taken >= reps and not self.cpu_filter):
                    break
        if self.bar is not None:
            self.bar.update(reps)
        self.abort_all(reqs)

    def measure_decode(self) -> None:
        g = self.grid
        warm, reps = max(1, g.warmup), g.repeats
        for b, L in decode_cells(g):
            first = max(1, L - (reps - 1) // 2 - warm)
            reqs = self.start_decodes(b, first, warm + reps * (1 + RETRIES))
            self.decode_steps(["decode", b, L], reqs)

    def measure_decode_mix(self) -> None:
        """Decode batches with unequal contexts (the fit's padding weight): for two batch
        sizes, one long context among short ones, and half long."""
        g = self.grid
        warm, reps = max(1, g.warmup), g.repeats
        big = max(2048, self.settings.max_num_batched_tokens)
        for b, name, ctx in mix_cells(g):
            steps = math.ceil(sum(ctx) / big) + 1  # prefill steps, while the first ones decode
            reqs = [
                self.add(
                    max(1, c - steps - warm - (reps - 1) // 2),
                    steps + warm + reps * (1 + RETRIES) + 8,
                )
                for c in ctx
            ]
            with self.limits(budget=big, seqs=max(b, self.settings.max_num_seqs)):
                while not all(r.num_uncomputed_tokens == 1 for r in reqs):
                    self.step()
            self.decode_steps(["decode-mix", b, name], reqs)

    def measure_mixed(self) -> None:
        g = self.grid
        L0 = g.decode_contexts[0]
        steps = len(self.passes()) * len(g.prefill_tokens) * (1 + RETRIES)

        def once(n: int, b: int) -> tuple[float, list, list]:
            new = self.add(n, 1)
            with self.limits(budget=b + n, seqs=b + 1):
                dt, pre, dec = self.step()
            if pre != [(n, 0)] or len(dec) != b or not new.is_finished:
                raise CalibrationError(
                    f"mixed cell ({n}, {b}) ran prefill {pre}, {len(dec)} decodes"
                )
            return dt, pre, dec

        for b in g.decode_batches:
            reqs = self.start_decodes(b, L0, steps)
            for rep in self.passes():
                for k in self.rng.permutation(len(g.prefill_tokens)):
                    n = g.prefill_tokens[k]
                    self.measure(["mixed", n, b], lambda n=n, b=b: once(n, b), rep >= g.warmup)
            self.abort_all(reqs)

    def measure_chunks(self) -> None:
        cells = chunk_cells(self.grid)

        def once(n: int, p: int) -> tuple[float, list, list]:
            reqs = [self.add(n // p, 1) for _ in range(p)]
            with self.limits(budget=n, seqs=max(p, self.settings.max_num_seqs)):
                dt, pre, dec = self.step()
            if sorted(pre) != [(n // p, 0)] * p or dec or not all(r.is_finished for r in reqs):
                raise CalibrationError(f"chunk cell ({n}, {p}) ran prefill {pre}")
            return dt, pre, dec

        for rep in self.passes():
            for k in self.rng.permutation(len(cells)):
                n, p = cells[k]
                self.measure(["chunks", n, p], lambda n=n, p=p: once(n, p), rep >= self.grid.warmup)

    def measure_checks(self) -> None:
        """Compositions outside the tables (see the module doc), sized from the grid; each step
        recorded once, disturbed or not (the errors are computed on the undisturbed ones)."""
        g = self.grid
        b = g.decode_batches[len(g.decode_batches) // 2]
        lo, hi = g.decode_contexts[0], g.decode_contexts[min(2, len(g.decode_contexts) - 1)]
        n = g.prefill_tokens[len(g.prefill_tokens) // 2]
        c = g.prefill_contexts[1]
        steps = g.warmup + g.repeats
        # a decode batch with contexts spread from lo to hi (the engine pads to the longest)
        big = max(2048, self.settings.max_num_batched_tokens)
        lens = np.linspace(lo, hi, b).astype(int).tolist()
        room = steps + math.ceil(sum(lens) / big) + 4  # the first ones decode while others prefill
        reqs = [self.add(p, room) for p in lens]
        with self.limits(budget=big, seqs=max(b, self.settings.max_num_seqs)):
            while not all(r.num_uncomputed_tokens == 1 for r in reqs):
                self.step()
            for k in range(steps):
                dt, pre, dec = self.step()
                if k >= g.warmup and not pre and len(dec) == b:
                    self.record(["check", "decode-spread"], dt, pre, dec)
        if self.bar is not None:
            self.bar.update(g.repeats)
        self.abort_all(reqs)
        # decodes plus one prefill chunk with cached context; decodes plus two chunks
        reqs = self.start_decodes(b, lo, 3 * steps)
        for k in range(steps):
            new = self.add(c + n, 1)
            with self.limits(budget=b + c, seqs=b + 1):
                self.step()
            with self.limits(budget=b + n, seqs=b + 1):
                dt, pre, dec = self.step()
            if not new.is_finished:
                raise CalibrationError(f"check step ran prefill {pre}")
            if k >= g.warmup:
                self.record(["check", "mixed-with-context"], dt, pre, dec)
            half = max(2, n // 2)
            news = [self.add(half, 1), self.add(half, 1)]
            with self.limits(budget=b + 2 * half, seqs=b + 2):
                dt, pre, dec = self.step()
            if not all(r.is_finished for r in news):
                raise CalibrationError(f"check step ran prefill {pre}")
            if k >= g.warmup:
                self.record(["check", "mixed-two-chunks"], dt, pre, dec)
        if self.bar is not None:
            self.bar.update(2 * g.repeats)
        self.abort_all(reqs)

    def run_phases(self) -> dict[str, float]:
        """Warm up, then measure every phase of the grid in order; returns each phase's
        seconds (the progress bar, if any, names the running phase)."""
        phases: dict[str, float] = {}
        for name, run in (
            ("warmup", self.warm_up),
            ("prefill", self.measure_prefill),
            ("decode", self.measure_decode),
            ("decode-mix", self.measure_decode_mix),
            ("mixed", self.measure_mixed),
            ("chunks", self.measure_chunks),
            ("checks", self.measure_checks if self.grid.checks else lambda: None),
        ):
            t0 = time.perf_counter()
            if self.bar is not None:
                self.bar.set_postfix_str(name)
            run()
            phases[name] = round(time.perf_counter() - t0, 3)
        return phases

    def warm_up(self) -> None:
        """A few unrecorded steps of every kind, so lazy initialisation and the allocator's
        first growth happen before anything is recorded."""
        g = self.grid
        for n in g.prefill_tokens:
            self.add(n, 2)
        with self.limits(budget=max(g.prefill_tokens) * 2):
            while self.sched.running or self.sched.waiting:
                self.step()


def expected_steps(grid: Grid, settings: EngineSettings) -> int:
    """How many steps a calibration records (for the progress bar)."""
    cells = (
        len(prefill_cells(grid, settings))
        + len(decode_cells(grid))
        + len(chunk_cells(grid))
        + len(mix_cells(grid))
        + len(grid.prefill_tokens) * len(grid.decode_batches)
        + (3 if grid.checks else 0)
    )
    return cells * grid.repeats


def _check_errors(model: ProfiledCostModel, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The model's error on the recorded steps: per grid kind (the noise around each median)
    and per check (how well the tables combine)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    quiet = [s for s in samples if not s.get("disturbed")]
    for s in quiet if len(quiet) >= len(samples) // 4 else samples:
        pred = model.step_time([tuple(c) for c in s["prefill"]], s["decode"])
        key = s["cell"][0] if s["cell"][0] != "check" else f"check:{s['cell'][1]}"
        groups.setdefault(key, []).append((float(s["seconds"]), pred))
    out = {}
    for key, pairs in groups.items():
        rel = [(p - m) / m for m, p in pairs if m > 0]
        out[key] = {
            "samples": len(pairs),
            "median_measured_s": statistics.median(m for m, _ in pairs),
            "median_predicted_s": statistics.median(p for _, p in pairs),
            "median_rel_error": statistics.median(rel) if rel else None,
            "mape": statistics.fmean(abs(r) for r in rel) if rel else None,
        }
    return out


def _utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (a profile's ``created``)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def _cpu_share(samples: Sequence[dict[str, Any]]) -> float | None:
    """Process CPU time over wall time of the recorded steps: about the thread count on a quiet
    machine (1 with one thread); less means the process waited for a core."""
    wall = sum(s["seconds"] for s in samples)
    return sum(s.get("cpu_seconds", 0.0) for s in samples) / wall if wall > 0 else None


def run_calibration(
    model: str,
    *,
    settings: EngineSettings,
    grid: Grid,
    dtype: str,
    device: str | None,
    threads: int | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """See :func:`scripts.calibrate.calibrate`."""
    import torch

    from scripts.bench.report import provenance

    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    cfg = model_config(model)
    positions = cfg.get("max_position_embeddings")
    if positions and settings.max_model_len > int(positions):
        raise ValueError(
            f"max_model_len={settings.max_model_len} exceeds the {positions} "
            f"positions of model {model!r}"
        )
    started = time.perf_counter()
    llm = build_llm(cfg, settings, dtype=dtype, device=device)
    dev = next(llm.model.parameters()).device
    info = device_info(dev, torch.get_num_threads())
    L = grid.decode_contexts
    if max(L) + grid.repeats + grid.warmup + 10 >= settings.max_model_len:
        raise ValueError(
            f"decode context {max(L)} leaves no room for {grid.repeats} steps within "
            f"max_model_len={settings.max_model_len}"
        )
    bar = tqdm(
        total=expected_steps(grid, settings), desc="calibrate", unit="step", disable=not progress
    )
    cpu_filter = dev.type == "cpu" and torch.get_num_threads() == 1
    cal = Calibrator(llm, settings, grid, seed, bar, cpu_filter=cpu_filter)
    phases = cal.run_phases()
    bar.close()
    grid_samples = [s for s in cal.samples if s["cell"][0] != "check"]
    tables, notes = fit_tables(grid_samples, grid.axes())
    profile: dict[str, Any] = {
        "schema": PROFILE_SCHEMA,
        "created": _utc_now(),
        "device": info,
        "model": {
            "name": model,
            "config": cfg,
            "parameters": int(sum(p.numel() for p in llm.model.parameters())),
        },
        "dtype": dtype,
        "threads": int(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "engine": {**settings.to_dict(), "linear_backend": llm.model.linear_backend},
        "decode_context": "max",
        "calibration": {
            "what": "seconds of one Engine.step() (schedule, forward, sample, update), "
            "time.perf_counter around it",
            "statistic": "per cell, the mean of the repeats without the smallest and largest "
            "(scripts.calibrate.fit.robust_mean)",
            "cpu_share": _cpu_share(cal.samples),
            "disturbed_filter": {
                "enabled": cpu_filter,
                "min_cpu_share": DISTURBED_CPU_SHARE,
                "retries": RETRIES,
                "disturbed_samples": sum(bool(s["disturbed"]) for s in cal.samples),
                "samples": len(cal.samples),
            },
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
    profile["checks"] = _check_errors(ProfiledCostModel(profile, source="calibration"), cal.samples)
    return profile

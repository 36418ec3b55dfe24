"""Run our engine and the peers on one workload, interleaved, and collect the results.

For each thread count: every available system gets a worker process (its own interpreter, its
own venv for a peer) that loads the model once and runs the whole workload once untimed (the
warm-up). Then ``rounds`` rounds; each round runs the offline workload on every system in turn,
then the batch-1 decode pair (:class:`.compare.DecodeJobs`) on every system in turn, in the order
:func:`.compare.schedule` gives (rotated each round). Only one worker computes at a time; the
others wait on their stdin. The 1-minute load average is sampled before every job, and each
idle worker's CPU time is read from ``/proc`` around the others' jobs, so a worker that burns
CPU while waiting shows up in the report.

A system that cannot be installed, converted or started is reported with the reason and left
out; one that fails mid-run is dropped from the later rounds of that thread count. The others
still run.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from . import compare
from .envs import PeerUnavailable

OURS = "servelab"
LOAD_TIMEOUT_S = 3600.0  # vLLM's first start compiles for minutes, more on a busy machine
JOB_TIMEOUT_S = 3600.0
LOG_TAIL = 30


class PeerRunError(RuntimeError):
    """A worker failed: it exited, timed out, or answered ``ok: false`` (message says which)."""


class SystemLike(Protocol):
    """What :class:`PeerRun` needs of a system (:class:`.systems.System`, or a test's fake)."""

    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...

    def python(self, log: Callable[[str], None] = ...) -> Path: ...
    def version(self) -> str: ...
    def thread_env(self, threads: int) -> dict[str, str]: ...
    def model_for(self, python: Path, hf_dir: Path, work: Path, dtype: str) -> Path: ...
    def worker_argv(self, python: Path) -> list[str]: ...


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux ``/proc``), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class WorkerProcess:
    """One worker subprocess speaking ``peer_workers/_protocol.py``; its stderr goes to
    ``log``. :meth:`call` sends a request and returns the reply, or raises
    :class:`PeerRunError` with the reason and the log's last lines."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = log.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **env},
            text=True,
            bufsize=1,
        )

    def call(self, payload: dict[str, Any], timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(payload) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        line = self._readline(stdout, timeout)
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise PeerRunError(
                f"{self.name} worker wrote a non-JSON line: {line[:200]!r}"
            ) from None
        if not reply.get("ok"):
            raise PeerRunError(
                f"{self.name} worker: {reply.get('error')}\n{reply.get('traceback', '')}".strip()
            )
        return reply

    def _readline(self, stdout: IO[str], timeout: float) -> str:
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.kill()
                raise PeerRunError(f"{self.name} worker gave no answer in {timeout:.0f} s")
        line = stdout.readline()
        if not line:
            raise self._died()
        return line

    def _died(self) -> PeerRunError:
        rc = self.proc.wait(timeout=30)
        return PeerRunError(
            f"{self.name} worker exited with code {rc}; last lines of {self.log}:\n{_tail(self.log)}"
        )

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid) if self.proc.poll() is None else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"cmd": "quit"}, timeout=60)
                self.proc.wait(timeout=60)
            except (PeerRunError, subprocess.TimeoutExpired, OSError):
                self.kill()
        self._stderr.close()


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class PeerRun:
    """The comparison at one dtype: ``systems`` (ours first), the offline ``job``, the
    ``decode`` pair, and ``load`` (the fields of the protocol's ``load`` request besides model,
    threads and dtype). :meth:`run` fills and returns ``self.res``; ``on_update`` is called
    after every job so the caller can write the report as it grows."""

    def __init__(
        self,
        systems: Sequence[SystemLike],
        hf_dir: Path,
        work: Path,
        logs: Path,
        job: compare.Job,
        decode: compare.DecodeJobs,
        load: dict[str, Any],
        dtype: str = "fp32",
        warmup: compare.Job | None = None,
        log: Callable[[str], None] = print,
        on_update: Callable[[], None] = lambda: None,
    ) -> None:
        if not systems or systems[0].name != OURS:
            raise ValueError(f"the first system must be ours ({OURS!r})")
        self.systems, self.hf_dir, self.work, self.logs = list(systems), hf_dir, work, logs
        self.job, self.decode, self.load, self.dtype = job, decode, load, dtype
        # warm-up, untimed, after each load: by default the whole offline job and the decode
        # pair. A first pass pays one-time costs (kernels built or tuned per new batch shape):
        # our engine ran the offline job at 84 and then 142 tok/s in one measured run.
        self.warmup = [warmup] if warmup else [job, decode.first, decode.full]
        self.log, self.on_update = log, on_update
        self.res: dict[str, Any] = {"dtype": dtype, "systems": {}, "threads": {}}
        self.ready: dict[str, tuple[Path, Path]] = {}  # name -> (python, model)

    # -- preparing the systems -------------------------------------------------------------

    def prepare(self) -> None:
        """Install (once) and convert the model for each system; record why one is missing."""
        for s in self.systems:
            entry: dict[str, Any] = {"label": s.label, "version": s.version()}
            self.res["systems"][s.name] = entry
            try:
                python = s.python(self.log)
                model = s.model_for(python, self.hf_dir, self.work, self.dtype)
            except Exception as exc:  # noqa: BLE001 - whatever it is, report it and go on
                reason = (
                    str(exc) if isinstance(exc, PeerUnavailable) else f"{type(exc).__name__}: {exc}"
                )
                entry.update(status="unavailable", reason=reason)
                self.log(f"peers: {s.name} unavailable: {exc}")
                continue
            entry.update(status="ok", python=str(python), model=str(model))
            self.ready[s.name] = (python, model)
            self.on_update()

    # -- one thread count --------------------------------------------------------------------

    def _start(self, threads: int, out: dict[str, Any]) -> dict[str, WorkerProcess]:
        workers: dict[str, WorkerProcess] = {}
        for s in self.systems:
            if s.name not in self.ready:
                continue
            python, model = self.ready[s.name]
            request = {"cmd": "load", "model": str(model), "threads": threads, "dtype": self.dtype}
            log = self.logs / f"{s.name}-{self.dtype}-t{threads}.log"
            try:
                w = WorkerProcess(s.name, s.worker_argv(python), s.thread_env(threads), log)
            except OSError as exc:
                out["errors"][s.name] = f"start: {exc}"
                continue
            try:
                t0 = time.perf_counter()
                reply = w.call({**request, **self.load}, timeout=LOAD_TIMEOUT_S)
                for warm in self.warmup:
                    w.call(warm.payload())
                out["load"][s.name] = {
                    "wall_s": time.perf_counter() - t0,
                    **{k: reply.get(k) for k in ("load_s", "version", "config")},
                }
                workers[s.name] = w
            except PeerRunError as exc:
                w.close()
                out["errors"][s.name] = f"start: {exc}"
                self.log(f"peers: {s.name} ({threads} threads) failed to start: {exc}")
        return workers

    def _timed(
        self, workers: dict[str, WorkerProcess], name: str, job: compare.Job, idle: dict[str, float]
    ) -> dict[str, Any]:
        """Run ``job`` on ``name``'s worker; add the others' CPU seconds meanwhile to ``idle``."""
        before = {k: w.cpu_seconds() for k, w in workers.items() if k != name}
        load = _loadavg()
        reply = workers[name].call(job.payload())
        for k, t in before.items():
            now = workers[k].cpu_seconds()
            if t is not None and now is not None:
                idle[k] = idle.get(k, 0.0) + now - t
        ids = reply["token_ids"]
        if [len(x) for x in ids] != job.max_tokens:
            raise PeerRunError(f"{name}: output lengths differ from the requested max_tokens")
        return {"elapsed_s": float(reply["elapsed_s"]), "token_ids": ids, "loadavg_1m": load}

    def run_threads(self, threads: int, rounds: int) -> dict[str, Any]:
        out: dict[str, Any] = {"load": {}, "errors": {}, "rounds": [], "idle_cpu_s": {}}
        self.res["threads"][str(threads)] = out
        self.log(f"peers: {threads} thread(s): starting {', '.join(self.ready)}")
        workers = self._start(threads, out)
        outputs: dict[str, list[list[list[int]]]] = {k: [] for k in workers}
        try:
            if OURS not in workers:
                out["errors"].setdefault(OURS, "our engine did not start")
                return out
            for r, order in enumerate(compare.schedule(list(workers), rounds)):
                rec: dict[str, Any] = {"order": order, "offline": {}, "decode": {}}
                out["rounds"].append(rec)
                for part in ("offline", "decode"):
                    for name in order:
                        if name not in workers:
                            continue
                        try:
                            rec[part][name] = self._one(
                                workers, name, part, outputs, out["idle_cpu_s"]
                            )
                        except PeerRunError as exc:
                            workers.pop(name).close()
                            out["errors"][name] = f"round {r}, {part}: {exc}"
                            self.log(f"peers: {name} failed: {exc}")
                        self.on_update()
                out.update(summarize(out["rounds"], outputs))  # an interrupted run keeps ratios
                self.on_update()
                self.log(f"peers: {threads} thread(s), round {r + 1}/{rounds} done")
        finally:
            for w in workers.values():
                w.close()
        return out

    def _one(
        self,
        workers: dict[str, WorkerProcess],
        name: str,
        part: str,
        outputs: dict[str, list[list[list[int]]]],
        idle: dict[str, float],
    ) -> dict[str, Any]:
        if part == "offline":
            r = self._timed(workers, name, self.job, idle)
            outputs[name].append(r.pop("token_ids"))
            return {**r, "tokens_per_s": self.job.useful_tokens / r["elapsed_s"]}
        a = self._timed(workers, name, self.decode.first, idle)
        b = self._timed(workers, name, self.decode.full, idle)
        return {
            "first_s": a["elapsed_s"],
            "full_s": b["elapsed_s"],
            "tokens_per_s": self.decode.tokens_per_s(a["elapsed_s"], b["elapsed_s"]),
            "loadavg_1m": a["loadavg_1m"],
        }

    def run(self, threads: Sequence[int], rounds: int) -> dict[str, Any]:
        self.prepare()
        if OURS not in self.ready:
            return self.res
        for t in threads:
            self.run_threads(t, rounds)
            self.on_update()
        return self.res


def summarize(
    rounds: Sequence[dict[str, Any]], outputs: dict[str, list[list[list[int]]]]
) -> dict[str, Any]:
    """Ratios (ours / each peer) of offline and batch-1 decode tokens/s, the load average of
    each part, the agreement of greedy outputs with ours (from the first round), and whether
    each system gave the same outputs in every round."""
    systems = sorted({n for r in rounds for part in ("offline", "decode") for n in r[part]})
    summary: dict[str, Any] = {}
    for part in ("offline", "decode"):
        rates = {
            n: [r[part][n]["tokens_per_s"] if n in r[part] else float("nan") for r in rounds]
            for n in systems
        }
        loads = [r[part][n]["loadavg_1m"] for r in rounds for n in r[part]]
        loads = [x for x in loads if x is not None]
        summary[part] = {
            "tokens_per_s": {n: compare._median(v) for n, v in rates.items()},
            "ratios": compare.ratios(rates, OURS) if OURS in rates else {},
            "loadavg_1m": {"min": min(loads), "max": max(loads)} if loads else None,
        }
    ours = outputs.get(OURS) or []
    summary["agreement"] = {
        n: compare.agreement(ours[0], o[0]) for n, o in outputs.items() if n != OURS and o and ours
    }
    # each system against itself, over the rounds it completed (needs two of them)
    summary["deterministic"] = {
        n: all(x == o[0] for x in o) for n, o in outputs.items() if len(o) > 1
    }
    return summary

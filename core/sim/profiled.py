"""The profiled cost model: measured engine step times, interpolated.

:class:`ProfiledCostModel` answers :meth:`~core.sim.cost.CostModel.step_time` from tables of
whole ``Engine.step()`` times measured on one device by ``python -m scripts.calibrate``; no
formula of the hardware is assumed. Callers may rely on: exact values at every grid point of
each table; monotone step times (more tokens, context or sequences never cost less);
determinism (a pure function of the batch); and :meth:`ProfiledCostModel.decode_run_times`
bit-identical to step-by-step :meth:`~ProfiledCostModel.step_time`. Files use the JSON schema
``servelab.step-profile/1``; a missing file raises ``FileNotFoundError``, a malformed one
:class:`ProfileError` (a ``ValueError``) naming the file and the fault.

Tables, the step-time formula, guarantees and file format: docs/core/sim.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.sim.cost import CostModel

__all__ = [
    "PROFILE_SCHEMA",
    "ProfileError",
    "ProfiledCostModel",
    "Surface",
    "cpu_device_slug",
    "cpu_model_name",
    "cpu_profile_path",
    "extra_keys",
    "grid_segment",
    "keys_table",
    "load_pinned_profile",
    "pinned_origin",
    "pinned_profile",
    "profile_origin",
    "shipped_profile",
    "write_profile",
]

PROFILE_SCHEMA = "servelab.step-profile/1"
GRID_KEYS = ("prefill_tokens", "prefill_contexts", "decode_batches", "decode_contexts")
TABLE_SHAPES = {  # table -> (row axis, column axis)
    "prefill": ("prefill_tokens", "prefill_contexts"),
    "decode": ("decode_batches", "decode_contexts"),
    "mixed": ("prefill_tokens", "decode_batches"),
}


class ProfileError(ValueError):
    """A step profile that cannot be used; the message names the file (or object) and what is
    wrong with it."""


# --------------------------------------------------------------------------------------------
# Interpolation (the same numpy operations for one step and for a run of steps; the
# calibration's fit interpolates with them too)
# --------------------------------------------------------------------------------------------


def grid_segment(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the grid segment holding each ``x`` (within the grid) and the position within
    it (0 at its left end, 1 at its right)."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    lo = grid[i]
    return i, (x - lo) / (grid[i + 1] - lo)


class Surface:
    """A table on a ``rows x cols`` grid as a function: bilinear inside the grid; beyond the
    last row (column), linear with the slope of the last segment, made non-decreasing along
    the other axis (a running maximum), so that a table non-decreasing along both axes gives a
    function non-decreasing in both arguments everywhere; below the first row (column), the
    first one's values. Exact at grid points."""

    def __init__(self, table: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        self.t, self.rows, self.cols = np.asarray(table, dtype=float), rows, cols
        t = self.t
        # slope beyond the last row, per column; beyond the last column, per row
        self.s_rows = np.maximum.accumulate((t[-1] - t[-2]) / (rows[-1] - rows[-2]))
        self.s_cols = np.maximum.accumulate((t[:, -1] - t[:, -2]) / (cols[-1] - cols[-2]))

    def __call__(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        rows, cols, t = self.rows, self.cols, self.t
        rc = np.clip(r, rows[0], rows[-1])
        cc = np.clip(c, cols[0], cols[-1])
        i, wr = grid_segment(rows, rc)
        j, wc = grid_segment(cols, cc)
        a, b = t[i, j], t[i, j + 1]
        lo = a + wc * (b - a)
        a, b = t[i + 1, j], t[i + 1, j + 1]
        hi = a + wc * (b - a)
        v = lo + wr * (hi - lo)
        beyond_r, beyond_c = r - rc, c - cc  # > 0 only past the last row / column
        if np.any(beyond_r > 0):
            a, b = self.s_rows[j], self.s_rows[j + 1]
            v = v + np.maximum(beyond_r, 0.0) * (a + wc * (b - a))
        if np.any(beyond_c > 0):
            a, b = self.s_cols[i], self.s_cols[i + 1]
            v = v + np.maximum(beyond_c, 0.0) * (a + wr * (b - a))
        return v


def keys_table(
    xd: np.ndarray, batches: np.ndarray, contexts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``D`` of docs/core/sim.md on its grid: ``(E grid, table)`` from ``xd[i][j] = decode(B[i],
    L[j]) - decode(B[i], L0)``. The grid holds the extra keys of every decode cell
    (``B[i] (L[j] - L0)``); row ``i`` at ``E`` is ``xd`` of batch ``B[i]`` at context ``L0 + E /
    B[i]`` (linear along ``L``, and beyond its last value with the last slope)."""
    L0 = contexts[0]
    grid = np.unique(np.concatenate([b * (contexts - L0) for b in batches]))
    table = np.empty((batches.size, grid.size))
    last = contexts[-1]
    for i, b in enumerate(batches):
        lq = L0 + grid / b
        j, w = grid_segment(contexts, np.minimum(lq, last))
        row = xd[i]
        slope = (row[-1] - row[-2]) / (contexts[-1] - contexts[-2])
        table[i] = row[j] + w * (row[j + 1] - row[j]) + np.maximum(lq - last, 0.0) * slope
    return grid, table


def extra_keys(contexts: Sequence[int], L0: float, w: float) -> float:
    """``E`` of docs/core/sim.md for one decode batch (an exact integer sum, then the blend)."""
    total = sum(max(int(c) - L0, 0) for c in contexts)
    padded = len(contexts) * max(max(contexts) - L0, 0)
    return (1.0 - w) * float(total) + w * float(padded)


# --------------------------------------------------------------------------------------------
# The cost model
# --------------------------------------------------------------------------------------------


def _check_grid(grid: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(grid, Mapping):
        raise ProfileError(f"{where}: 'grid' must be an object with {list(GRID_KEYS)}")
    out = {}
    for k in GRID_KEYS:
        v = grid.get(k)
        if (
            not isinstance(v, list)
            or len(v) < 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        ):
            raise ProfileError(
                f"{where}: grid.{k} must be a list of at least two integers, got {v!r}"
            )
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ProfileError(f"{where}: grid.{k} must be strictly increasing, got {v}")
        lowest = 0 if k == "prefill_contexts" else 1
        if v[0] < lowest:
            raise ProfileError(f"{where}: grid.{k} must start at >= {lowest}, got {v}")
        out[k] = np.asarray(v, dtype=float)
    if out["prefill_contexts"][0] != 0:
        raise ProfileError(
            f"{where}: grid.prefill_contexts must start at 0, got {grid['prefill_contexts']}"
        )
    return out


def _check_table(
    tables: Mapping[str, Any], name: str, shape: tuple[int, int], where: str, axes: tuple[str, str]
) -> np.ndarray:
    raw = tables.get(name)
    try:
        t = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        t = np.asarray([])
    if t.shape != shape:
        raise ProfileError(
            f"{where}: tables.{name} must be a {shape[0]} x {shape[1]} list of "
            f"seconds ({axes[0]} x {axes[1]}), got {_describe_shape(raw)}"
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ProfileError(
            f"{where}: tables.{name} holds a value that is not a finite number of seconds >= 0"
        )
    return t


def _check_number(tables: Mapping[str, Any], name: str, where: str, lo: float, hi: float) -> float:
    v = tables.get(name)
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not (math.isfinite(v) and lo <= v <= hi)
    ):
        span = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ProfileError(f"{where}: tables.{name} must be a finite number {span}, got {v!r}")
    return float(v)


def _describe_shape(raw: Any) -> str:
    if not isinstance(raw, list):
        return repr(type(raw).__name__) if raw is not None else "nothing"
    try:
        return f"shape {np.asarray(raw, dtype=float).shape}"
    except (TypeError, ValueError):
        return "a ragged or non-numeric list"


def _monotone(
    t: np.ndarray, name: str, where: str, axes: tuple[tuple[str, np.ndarray], ...]
) -> np.ndarray:
    """``t`` if it is non-decreasing along both axes (``(label, grid)`` each) up to float
    rounding (1 ns), made exactly so (a running maximum only moves rounding noise); else
    :class:`ProfileError` naming the two cells."""
    for axis in (0, 1):
        d = np.diff(t, axis=axis)
        if np.any(d < -1e-9):
            i, j = (int(x) for x in np.unravel_index(int(np.argmin(d)), d.shape))
            (label, grid), (other, ogrid) = axes[axis], axes[1 - axis]
            a, b = (i, i + 1) if axis == 0 else (j, j + 1)
            at = j if axis == 0 else i
            raise ProfileError(
                f"{where}: {name} decreases from {label} {int(grid[a])} to {int(grid[b])} (at "
                f"{other} {int(ogrid[at])}); a step must not get cheaper with more tokens, context "
                "or sequences: re-run the calibration"
            )
    return np.maximum.accumulate(np.maximum.accumulate(t, axis=0), axis=1)


class ProfiledCostModel(CostModel):
    """Step times interpolated from a calibrated profile of the real engine (docs/core/sim.md).

    Contract: pure (same batch, same time), 0 for an empty batch, non-decreasing when a prefill
    chunk gains a token, any sequence gains cached context, or a sequence joins the batch;
    exact at every grid point of each table; :meth:`decode_run_times` bit-identical to
    :meth:`~core.sim.cost.CostModel.step_time_for` of each step. (The one part of the
    :class:`~core.sim.cost.CostModel` contract it does not promise: a decode turned into a
    two-token chunk takes another path through the engine and may cost less.) ``profile`` is
    the parsed JSON document (the layout in docs/core/sim.md); ``source`` names where it came
    from in error messages and in :meth:`describe`. Use :meth:`load` for a file.
    """

    def __init__(self, profile: Mapping[str, Any], *, source: str = "<profile>") -> None:
        where = source
        if not isinstance(profile, Mapping):
            raise ProfileError(f"{where}: expected a JSON object, got {type(profile).__name__}")
        if profile.get("schema") != PROFILE_SCHEMA:
            raise ProfileError(
                f"{where}: schema is {profile.get('schema')!r}, expected "
                f"{PROFILE_SCHEMA!r} (a step profile written by scripts.calibrate)"
            )
        grid = _check_grid(profile.get("grid"), where)
        tables = profile.get("tables")
        if not isinstance(tables, Mapping):
            raise ProfileError(
                f"{where}: 'tables' must be an object with {list(TABLE_SHAPES)}, "
                "extra_chunk_s and decode_padding_weight"
            )
        t: dict[str, np.ndarray] = {}
        for name, axes in TABLE_SHAPES.items():
            shape = (grid[axes[0]].size, grid[axes[1]].size)
            t[name] = _check_table(tables, name, shape, where, axes)
        extra = _check_number(tables, "extra_chunk_s", where, 0.0, math.inf)
        w = _check_number(tables, "decode_padding_weight", where, 0.0, 1.0)
        self.profile = dict(profile)
        self.source = source
        self.grid = {k: [int(x) for x in v] for k, v in grid.items()}
        N0 = np.concatenate(([0.0], grid["prefill_tokens"]))
        B0 = np.concatenate(([0.0], grid["decode_batches"]))
        C, L = grid["prefill_contexts"], grid["decode_contexts"]
        N, B = grid["prefill_tokens"], grid["decode_batches"]
        pre, dec = t["prefill"], t["decode"]
        m = np.zeros((N0.size, B0.size))
        m[1:, 0], m[0, 1:], m[1:, 1:] = pre[:, 0], dec[:, 0], t["mixed"]
        m = _monotone(
            m,
            "the base table (tables.mixed with the context-0 prefill and first-"
            "context decode edges)",
            where,
            (("prefill tokens", N0), ("decode batch", B0)),
        )
        # column 0 of both is 0, so non-decreasing along the context axis also means >= 0
        xp = _monotone(
            pre - pre[:, :1],
            "tables.prefill minus its context-0 column",
            where,
            (("prefill tokens", N), ("prefill context", C)),
        )
        xd = _monotone(
            dec - dec[:, :1],
            "tables.decode minus its first-context column",
            where,
            (("decode batch", B), ("decode context", L)),
        )
        egrid, kt = keys_table(xd, B, L)
        # the calibration made D monotone; a running maximum only moves rounding noise
        kt = np.maximum.accumulate(np.maximum.accumulate(kt, axis=0), axis=1)
        self.extra_chunk_s = extra
        self.decode_padding_weight = w
        self._L0 = float(L[0])
        self._m = Surface(m, N0, B0)
        self._xp = Surface(xp, N, C)
        self._d = Surface(kt, B, egrid)

    # ---- files -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProfiledCostModel:
        """The model of the profile at ``path`` (opened through :func:`core.data.open_data_file`,
        so runs record its sha256). ``FileNotFoundError`` or :class:`ProfileError` name the
        file."""
        from core.data import open_data_file

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: no such step profile (make one with "
                "`nox -s calibrate` / `python -m scripts.calibrate`)"
            )
        with open_data_file(file) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ProfileError(f"{file}: not valid JSON ({exc})") from None
            except UnicodeDecodeError as exc:
                raise ProfileError(f"{file}: not a text file ({exc})") from None
        return cls(doc, source=str(file))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON to ``path`` atomically (creating the folder)."""
        return write_profile(self.profile, path)

    # ---- timing ------------------------------------------------------------------------------

    def _times(self, prefill: np.ndarray, b: int, extra_keys: np.ndarray) -> np.ndarray:
        """Seconds of steps with the prefill chunks ``prefill`` (``[P, 2]``: tokens, context)
        and ``b`` decodes with extra keys ``E`` = each element of ``extra_keys``. The one
        expression both :meth:`step_time` and :meth:`decode_run_times` evaluate."""
        one = np.ones(1)
        more = max(0, prefill.shape[0] - 1)  # chunks beyond the first: sampled rows
        tp = float(np.sum(prefill[:, 0])) if prefill.shape[0] else 0.0
        t = self._m(one * (tp - more), one * (b + more))
        if b:
            t = t + self._d(one * b, extra_keys)
        if prefill.shape[0]:
            t = t + float(np.sum(self._xp(prefill[:, 0], prefill[:, 1])))
            t = t + self.extra_chunk_s * more
        return t

    def step_time(
        self, prefill_chunks: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()
    ) -> float:
        chunks = []
        for n, c in prefill_chunks:
            n, c = int(n), int(c)
            if n < 0 or c < 0:
                raise ValueError(f"prefill chunk ({n}, {c}): tokens and context must be >= 0")
            if n:
                chunks.append((n, c))
        ctx = [int(c) for c in decode_contexts]
        if any(c < 0 for c in ctx):
            raise ValueError(f"decode contexts must be >= 0, got {min(ctx)}")
        if not chunks and not ctx:
            return 0.0
        pre = np.asarray(sorted(chunks), dtype=float).reshape(-1, 2)  # sums in one order
        e = np.array([extra_keys(ctx, self._L0, self.decode_padding_weight) if ctx else 0.0])
        return float(self._times(pre, len(ctx), e)[0])

    def decode_run_times(self, context_lens: Sequence[int], k: int) -> np.ndarray:
        """See :meth:`CostModel.decode_run_times`: one vectorized evaluation of the step-time
        expression over the run's growing contexts (bit-identical to asking
        :meth:`step_time_for` for each step)."""
        ctx = np.asarray([int(c) for c in context_lens], dtype=np.int64)
        k = int(k)
        if ctx.size == 0 or k <= 0:
            return np.zeros(max(0, k))
        if ctx.min() <= 0:  # a one-token prefill in the first step: the generic loop
            return super().decode_run_times(ctx.tolist(), k)
        i = np.arange(k, dtype=np.int64)[:, None]
        L0, w = self._L0, self.decode_padding_weight
        # the same exact integer sums as extra_keys, then the same float blend
        total = np.maximum(ctx[None, :] + i - L0, 0).sum(axis=1).astype(np.float64)
        padded = (ctx.size * np.maximum(ctx.max() + i[:, 0] - L0, 0)).astype(np.float64)
        e = (1.0 - w) * total + w * padded
        return self._times(np.zeros((0, 2)), int(ctx.size), e)

    # ---- description -------------------------------------------------------------------------

    @property
    def engine_settings(self) -> dict[str, Any]:
        """The engine configuration the profile was measured with (block size, token budget,
        sequence limit, KV blocks, prefix caching, ...): a simulation is only calibrated for
        these."""
        return dict(self.profile.get("engine") or {})

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The model's config dict (a random-initialized model is rebuilt from it)."""
        model = self.profile.get("model") or {}
        cfg = model.get("config")
        return dict(cfg) if isinstance(cfg, Mapping) else None

    def require_model_config(self) -> dict[str, Any]:
        """:attr:`model_config`, or :class:`ProfileError` naming the file when there is none."""
        cfg = self.model_config
        if cfg is None:
            raise ProfileError(f"{self.source}: the profile names no model config")
        return cfg

    def describe(self) -> dict[str, Any]:
        """What the model is, for provenance: source file, device, model, dtype, threads,
        torch version, when it was made, the engine settings and the grid."""
        p = self.profile
        return {
            "cost_model": "profiled",
            "source": self.source,
            "device": p.get("device"),
            "model": (p.get("model") or {}).get("name"),
            "dtype": p.get("dtype"),
            "threads": p.get("threads"),
            "torch_version": p.get("torch_version"),
            "created": p.get("created"),
            "engine": self.engine_settings,
            "grid": self.grid,
            "extra_chunk_s": self.extra_chunk_s,
            "decode_padding_weight": self.decode_padding_weight,
        }

    def __repr__(self) -> str:
        dev = (self.profile.get("device") or {}).get("name", "?")
        model = (self.profile.get("model") or {}).get("name", "?")
        return f"ProfiledCostModel({self.source!r}, device={dev!r}, model={model!r})"


@functools.cache
def cpu_model_name() -> str:
    """This machine's CPU model as ``/proc/cpuinfo`` names it (the platform's word elsewhere)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_device_slug(name: str, threads: int) -> str:
    """The file-name part of a CPU profile: ``cpu-amd-epyc-1t`` (CPU model and torch threads)."""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
    return f"cpu-{slug}-{threads}t"


def cpu_profile_path(model: str, *, threads: int = 1, fallback: str | None = None) -> Path:
    """The step profile of ``model`` for this machine's CPU: ``data/profiles/<this CPU's
    slug>-<model>.json`` when one exists (``nox -s calibrate`` writes it there), else the shipped
    ``data/<fallback>``, which was measured on another host (:func:`profile_origin` says which).
    Raises FileNotFoundError naming both when neither exists."""
    from core.data import DATA_DIR

    own = Path(DATA_DIR) / "profiles" / f"{cpu_device_slug(cpu_model_name(), threads)}-{model}.json"
    if own.is_file() or fallback is None:
        if not own.is_file():
            raise FileNotFoundError(
                f"{own}: no step profile of {model} for this CPU "
                f"(run: nox -s calibrate -- --model {model})"
            )
        return own
    shipped = Path(DATA_DIR) / fallback
    if not shipped.is_file():
        raise FileNotFoundError(f"neither {own} (this CPU) nor the shipped {shipped} exists")
    return shipped


def pinned_profile(model: str, *, fallback: str | None = None, threads: int = 1) -> dict[str, str]:
    """The step profile of ``model`` a run uses (:func:`cpu_profile_path`: this CPU's own, else
    ``data/<fallback>``), pinned for a sweep point's config: ``{"profile": its path, relative to
    ``data/`` when it is there, "profile_sha256": its sha256}``. A point that carries it is never
    reused with another profile; :func:`load_pinned_profile` loads it back."""
    from core.data import DATA_DIR, sha256_file

    path = cpu_profile_path(model, threads=threads, fallback=fallback)
    try:
        name = path.resolve().relative_to(Path(DATA_DIR).resolve()).as_posix()
    except ValueError:
        name = str(path)
    return {"profile": name, "profile_sha256": sha256_file(path)}


def load_pinned_profile(name: str, sha256: str | None) -> ProfiledCostModel:
    """The profile a point's config names (relative to ``data/`` or absolute), recorded for
    provenance, loaded once per process and content. Raises :class:`ProfileError` when the
    file's sha256 now is not ``sha256`` (it changed since the sweep was planned; None checks
    nothing) and FileNotFoundError naming a missing file."""
    from core.data import DATA_DIR, sha256_file, track_data_file

    path = Path(name) if Path(name).is_absolute() else Path(DATA_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such step profile")
    resolved = track_data_file(path)
    found = sha256_file(resolved)  # the file as it is now (a profile hashes in about a ms)
    if sha256 is not None and found != sha256:
        raise ProfileError(
            f"{path}: sha256 {found[:12]} is not the {sha256[:12]} this point was "
            "planned with (the profile changed since); run again"
        )
    return _load_by_content(str(resolved), found)


@functools.lru_cache(maxsize=8)
def _load_by_content(path: str, sha256: str) -> ProfiledCostModel:  # a new content, a new load
    return ProfiledCostModel.load(path)


def pinned_origin(name: str, sha256: str | None) -> str:
    """:func:`profile_origin` of a pinned profile, for notes written after the run; when the file
    cannot be read now (gone, changed), its name and why."""
    try:
        return profile_origin(load_pinned_profile(name, sha256))
    except (OSError, ValueError) as exc:
        return f"{name} (unreadable now: {exc})"


def profile_origin(model: ProfiledCostModel) -> str:
    """Where a profile's step times were measured, in words for notes and captions: the file,
    the device and its host, the date and commit, and whether this machine has the same CPU."""
    from core.data import REPO_ROOT

    doc = model.profile
    dev = doc.get("device") or {}
    prov = doc.get("provenance") or {}
    src = Path(model.source)
    try:
        where = str(src.resolve().relative_to(REPO_ROOT))
    except ValueError:
        where = src.name
    commit = (prov.get("git") or {}).get("commit") or ""
    host = dev.get("hostname") or (prov.get("host") or {}).get("hostname")
    measured = (
        f"measured on {dev.get('name', '?')} ({dev.get('cpu_capability') or dev.get('type')}"
        f", {doc.get('threads', dev.get('threads', '?'))} thread(s), torch "
        f"{doc.get('torch_version', '?')})"
    )
    if host:
        measured += f", host {host!r},"
    measured += f" on {str(doc.get('created', '?'))[:10]}"
    if commit:
        measured += f" at commit {commit[:7]}"
    if dev.get("type", "cpu") == "cpu":
        here = cpu_model_name()
        same = here == dev.get("name")
        measured += (
            "; this machine has the same CPU model"
            if same
            else f"; this machine is a different CPU ({here}): its times differ"
        )
    return f"{where}, {measured}"


@functools.lru_cache(maxsize=8)
def shipped_profile(relative: str) -> ProfiledCostModel:
    """The profile shipped at ``data/<relative>`` (e.g. ``"profiles/<device>-<model>.json"``),
    loaded once per process through :meth:`ProfiledCostModel.load`, so the first run that
    reads it records its sha256."""
    from core.data import data_path

    return ProfiledCostModel.load(data_path(relative))


def write_profile(profile: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a profile document as indented JSON to ``path`` atomically (a temporary file in
    the same folder, then a rename); validates it first (:class:`ProfileError`)."""
    path = Path(path)
    ProfiledCostModel(profile, source=str(path))  # never write a file that cannot be loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # a shipped data file, not a private temporary one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Fitting a step profile: the measured samples of ``python -m scripts.calibrate`` -> the tables
of a :class:`core.sim.profiled.ProfiledCostModel` (the module doc of :mod:`core.sim.profiled`
says what the tables mean and how the model evaluates them).

:func:`fit_tables` is the whole fit; :func:`monotone_repair` and :func:`robust_mean` are the
parts the calibration's notes name. The fit interpolates with the model's own
:class:`~core.sim.profiled.Surface` and :func:`~core.sim.profiled.keys_table`, so a fitted table
is exact where the model reads it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core.sim.profiled import (
    GRID_KEYS,
    ProfileError,
    Surface,
    extra_keys,
    grid_segment,
    keys_table,
)

__all__ = ["fit_tables", "monotone_repair", "robust_mean"]

Sample = Mapping[str, Any]  # one measured step of a profile's "samples"


def _isotonic(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """The closest non-decreasing sequence in weighted least squares (pool adjacent
    violators); a very heavy element keeps its value."""
    w_in = [1.0] * len(values) if weights is None else [float(w) for w in weights]
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, w_in, strict=True):
        blocks.append([float(v), w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    out: list[float] = []
    for m, _, n in blocks:
        out += [m] * int(n)
    return out


def monotone_repair(
    table: np.ndarray, passes: int = 4, weights: np.ndarray | None = None
) -> np.ndarray:
    """A copy of the 2-D ``table`` made non-decreasing along both axes: a few alternating
    passes of (weighted) isotonic regression along rows and columns, so measurement noise is
    averaged out rather than pushed up, then a running maximum along each axis, which
    guarantees the property. Cells with a very large weight keep their values."""
    t = np.array(table, dtype=float)
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)
    for _ in range(passes):
        t = np.array([_isotonic(row, wr) for row, wr in zip(t, w, strict=True)])
        t = np.array([_isotonic(col, wc) for col, wc in zip(t.T, w.T, strict=True)]).T
    t = np.maximum.accumulate(t, axis=1)
    return np.maximum.accumulate(t, axis=0)


def _fill_linear(row: np.ndarray, grid: np.ndarray, where: str) -> np.ndarray:
    """``row`` with its missing (NaN) entries extrapolated linearly from the nearest two
    measured ones along ``grid``."""
    ok = np.flatnonzero(np.isfinite(row))
    if ok.size == row.size:
        return row
    if ok.size < 2:
        raise ProfileError(f"{where}: fewer than two measured cells, cannot fill {row.tolist()}")
    out = row.copy()
    for k in np.flatnonzero(~np.isfinite(row)):
        a, b = (ok[-2], ok[-1]) if k > ok[-1] else (ok[0], ok[1]) if k < ok[0] else (None, None)
        if a is None:  # a hole inside: interpolate between its neighbours
            a, b = ok[ok < k][-1], ok[ok > k][0]
        slope = (row[b] - row[a]) / (grid[b] - grid[a])
        out[k] = row[a] + slope * (grid[k] - grid[a])
    return out


def robust_mean(values: Sequence[float]) -> float:
    """The mean without the smallest and the largest value (when there are at least 5): the
    expected step time, which is what simulated latencies add up, but not moved by one stall
    or one lucky step."""
    v = sorted(float(x) for x in values)
    if len(v) >= 5:
        v = v[1:-1]
    return statistics.fmean(v)


def _usable(group: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The samples of one cell to use: those not marked ``disturbed`` (the process waited for
    a core during the step), or all of them when every one is."""
    quiet = [s for s in group if not s.get("disturbed")]
    return quiet or group


def _cell_table(
    samples: Iterable[Mapping[str, Any]],
    kind: str,
    rows: Sequence[int],
    cols: Sequence[int],
    value: Any = None,
) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], list[Sample]]]:
    """:func:`robust_mean` of the seconds (or ``value(sample)``) per ``(row, col)`` cell of the
    :func:`_usable` samples whose ``cell`` is ``[kind, row, col]``; NaN where there is none.
    Also each cell's relative spread (median absolute deviation over the median) and the
    samples each cell used (by grid index)."""
    groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for s in samples:
        cell = s["cell"]
        if cell[0] == kind:
            groups.setdefault((int(cell[1]), int(cell[2])), []).append(s)
    ri = {v: i for i, v in enumerate(rows)}
    ci = {v: i for i, v in enumerate(cols)}
    med = np.full((len(rows), len(cols)), np.nan)
    spread = np.full_like(med, np.nan)
    used: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for (r, c), group in groups.items():
        if r in ri and c in ci:
            use = _usable(group)
            vals = [float(s["seconds"]) if value is None else float(value(s)) for s in use]
            m = statistics.median(vals)
            med[ri[r], ci[c]] = robust_mean(vals)
            spread[ri[r], ci[c]] = statistics.median(abs(v - m) for v in vals) / m if m else 0.0
            used[(ri[r], ci[c])] = use
    return med, spread, used


def _disturbed(
    name: str,
    used: Mapping[tuple[int, int], list[Mapping[str, Any]]],
    rows: np.ndarray,
    cols: np.ndarray,
) -> list[list[Any]]:
    """The cells of table ``name`` whose every sample was disturbed."""
    return [
        [name, int(rows[i]), int(cols[j])]
        for (i, j), use in sorted(used.items())
        if use and all(s.get("disturbed") for s in use)
    ]


def _max_rel_change(before: np.ndarray, after: np.ndarray) -> float:
    den = np.maximum(np.abs(before), 1e-12)
    return float(np.max(np.abs(after - before) / den)) if before.size else 0.0


def _interp1(grid: np.ndarray, values: np.ndarray, x: float) -> float:
    """``values`` on ``grid`` at ``x``, linear, extrapolated with the end segments."""
    i, w = grid_segment(grid, np.array([float(x)]))
    return float((values[i] + w * (values[i + 1] - values[i]))[0])


def fit_tables(
    samples: Sequence[Mapping[str, Any]], grid: Mapping[str, Sequence[int]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tables of a profile from its raw ``samples`` (see the module doc), and notes on how
    they were made.

    Every table cell is the :func:`robust_mean` of its samples' seconds. Sample ``cell`` kinds:

    - ``["prefill", n, c]``; ``["decode", b, L]`` (equal contexts that may drift around ``L``:
      each cell is moved from its samples' mean longest context to ``L`` along the row's slope);
    - ``["mixed", n, b]`` (each sample's decodes moved back to context ``L0`` with ``D``);
    - ``["decode-mix", b, name]``: decodes with unequal contexts; ``decode_padding_weight`` is
      the ``w`` in 0, 0.05, ..., 1 that predicts them best (relative squared error; 1 without
      such samples);
    - ``["chunks", n, p]``: ``p`` chunks of ``n / p`` tokens at context 0; ``extra_chunk_s`` is
      the :func:`robust_mean` of what they cost beyond the model without it (``M(n - p + 1, p -
      1)``), per extra chunk, floored at 0.

    Samples marked ``disturbed`` (the calibration saw the process wait for a core during the
    step) are left out of a cell that has others (``notes["disturbed_cells"]`` lists the cells
    that had none). Cells without samples (beyond the calibrated KV or context range) are
    extrapolated linearly along the context axis (``notes["extrapolated"]``). Every table is
    made monotone by :func:`monotone_repair` (``notes["repair_max_rel_change"]`` says how much
    that moved any cell).
    """
    g = {k: [int(v) for v in grid[k]] for k in GRID_KEYS}
    N, C, B, L = (np.asarray(g[k], dtype=float) for k in GRID_KEYS)
    L0 = float(L[0])
    notes: dict[str, Any] = {"extrapolated": [], "repair_max_rel_change": {}, "spread": {}}

    def filled(
        table: np.ndarray, name: str, axis_grid: np.ndarray, labels: Sequence[int]
    ) -> np.ndarray:
        out = table.copy()
        for i in range(out.shape[0]):
            missing = [int(x) for x, v in zip(axis_grid, out[i], strict=True) if not np.isfinite(v)]
            if missing:
                notes["extrapolated"].append({"table": name, "row": labels[i], "columns": missing})
                out[i] = _fill_linear(out[i], axis_grid, f"table {name!r} row {labels[i]}")
        return out

    # prefill: the context-0 column, then what context adds (>= 0, monotone in n and c)
    pre, notes["spread"]["prefill"], used = _cell_table(
        samples, "prefill", g["prefill_tokens"], g["prefill_contexts"]
    )
    notes["disturbed_cells"] = _disturbed("prefill", used, N, C)
    pre = filled(pre, "prefill", C, g["prefill_tokens"])
    pre0 = np.asarray(_isotonic(pre[:, 0]))
    xp = monotone_repair(np.maximum(pre - pre[:, :1], 0.0))
    new_pre = pre0[:, None] + xp
    notes["repair_max_rel_change"]["prefill"] = _max_rel_change(pre, new_pre)

    # decode: the L0 column, then what longer contexts add
    dec, notes["spread"]["decode"], used = _cell_table(
        samples, "decode", g["decode_batches"], g["decode_contexts"]
    )
    notes["disturbed_cells"] += _disturbed("decode", used, B, L)
    # a cell's samples may sit off its context (steps repeated after a disturbed one): move
    # each cell's value from its samples' mean longest context to L along the row's slope
    slope = np.full_like(dec, np.nan)
    for i in range(dec.shape[0]):
        ok = np.isfinite(dec[i])
        if ok.sum() >= 2:
            slope[i, ok] = np.gradient(dec[i, ok], L[ok])
    for (i, j), use in used.items():
        off = statistics.fmean(float(max(s["decode"])) for s in use) - L[j]
        if off and np.isfinite(slope[i, j]):
            dec[i, j] -= max(0.0, slope[i, j]) * off
    dec = filled(dec, "decode", L, g["decode_batches"])
    dec0 = np.asarray(_isotonic(dec[:, 0]))
    xd = monotone_repair(np.maximum(dec - dec[:, :1], 0.0))
    # D must also not fall when the same extra keys spread over more sequences: repair it on
    # its own grid and read each decode cell back from it (a few rounds settle it)
    for _ in range(8):
        egrid, kt = keys_table(xd, B, L)
        rep_kt = monotone_repair(kt)
        if np.allclose(rep_kt, kt, rtol=0, atol=1e-12):
            break
        idx = {float(e): k for k, e in enumerate(egrid)}
        xd = np.array(
            [[rep_kt[i, idx[float(b * (ctx - L0))]] for ctx in L] for i, b in enumerate(B)]
        )
    # then exactly what the model will use (a running maximum on D's grid) read back into the
    # decode cells until that changes nothing, so a pure decode at a grid point is exact
    for _ in range(100):
        egrid, kt = keys_table(xd, B, L)
        kt = np.maximum.accumulate(np.maximum.accumulate(kt, axis=0), axis=1)
        idx = {float(e): k for k, e in enumerate(egrid)}
        back = np.array([[kt[i, idx[float(b * (ctx - L0))]] for ctx in L] for i, b in enumerate(B)])
        if np.allclose(back, xd, rtol=0.0, atol=1e-13):
            break
        xd = back
    new_dec = dec0[:, None] + xd
    notes["repair_max_rel_change"]["decode"] = _max_rel_change(dec, new_dec)
    d_fn = Surface(kt, B, egrid)

    def d_term(batch: int, contexts: Sequence[int], w: float) -> float:
        e = extra_keys(contexts, L0, w)
        return float(d_fn(np.array([float(batch)]), np.array([e]))[0])

    # how unequal decode contexts combine
    mix = [s for group in _groups(samples, "decode-mix").values() for s in _usable(group)]
    weights = np.linspace(0.0, 1.0, 21)
    if mix:

        def loss(w: float) -> float:
            err = 0.0
            for s in mix:
                ctx = s["decode"]
                pred = _interp1(B, dec0, len(ctx)) + d_term(len(ctx), ctx, w)
                err += ((pred - float(s["seconds"])) / float(s["seconds"])) ** 2
            return err

        losses = [loss(float(w)) for w in weights]
        w_fit = float(weights[int(np.argmin(losses))])
        notes["decode_padding_weight_loss"] = {
            f"{w:.2f}": v for w, v in zip(weights, losses, strict=True)
        }
    else:
        w_fit = 1.0

    # mixed: each sample's decode contexts brought back to L0
    def at_l0(s: Mapping[str, Any]) -> float:
        ctx = s["decode"]
        return float(s["seconds"]) - d_term(len(ctx), ctx, w_fit)

    mixed, notes["spread"]["mixed"], used = _cell_table(
        samples, "mixed", g["prefill_tokens"], g["decode_batches"], at_l0
    )
    notes["disturbed_cells"] += _disturbed("mixed", used, N, B)
    if not np.all(np.isfinite(mixed)):
        missing = [
            [int(N[i]), int(B[j])] for i, j in zip(*np.nonzero(~np.isfinite(mixed)), strict=True)
        ]
        raise ProfileError(f"mixed steps not measured for (prefill tokens, decode batch) {missing}")
    full = np.zeros((N.size + 1, B.size + 1))
    full[1:, 0], full[0, 1:], full[1:, 1:] = pre0, dec0, mixed
    fixed = np.ones_like(full)
    fixed[0, :] = fixed[:, 0] = 1e12  # the pure-step edges stay as measured (exact there)
    rep = monotone_repair(full, weights=fixed)
    notes["repair_max_rel_change"]["mixed"] = _max_rel_change(full[1:, 1:], rep[1:, 1:])

    # further prefill chunks: p chunks of n / p tokens, against the model without eps
    per_chunk = []
    m_fn = Surface(rep, np.concatenate(([0.0], N)), np.concatenate(([0.0], B)))
    for s in (x for group in _groups(samples, "chunks").values() for x in _usable(group)):
        n, p = int(s["cell"][1]), int(s["cell"][2])
        base = float(m_fn(np.array([float(n - p + 1)]), np.array([float(p - 1)]))[0])
        per_chunk.append((float(s["seconds"]) - base) / max(1, p - 1))
    raw_extra = robust_mean(per_chunk) if per_chunk else 0.0
    notes["extra_chunk_s_measured"] = raw_extra
    tables = {
        "prefill": new_pre.tolist(),
        "decode": new_dec.tolist(),
        "mixed": rep[1:, 1:].tolist(),
        "extra_chunk_s": max(0.0, raw_extra),
        "decode_padding_weight": w_fit,
    }
    for k in ("prefill", "decode", "mixed"):
        sp = notes["spread"][k]
        notes["spread"][k] = float(np.nanmedian(sp)) if np.any(np.isfinite(sp)) else None
    return tables, notes


def _groups(samples: Iterable[Sample], kind: str) -> dict[tuple[Any, ...], list[Sample]]:
    """The samples of ``kind``, by cell."""
    out: dict[tuple[Any, ...], list[Sample]] = {}
    for s in samples:
        if s["cell"][0] == kind:
            out.setdefault(tuple(s["cell"]), []).append(s)
    return out

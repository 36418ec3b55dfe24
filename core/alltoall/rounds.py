"""All-to-all transfer orderings on a one-port network, their times and their lower bound.

The network: GPU ``g`` has a full-duplex port of ``bandwidth[g]`` bytes/s; a transfer from
``i`` to ``j`` runs at ``min(bandwidth[i], bandwidth[j])``. A *round schedule* is a sequence of
rounds; in a round every GPU sends to at most one peer and receives from at most one peer (no
incast), and the round lasts its ``duration``. Transfers may be split over rounds.

- :func:`lower_bound`: no ordering finishes before the busiest port has carried its bytes:
  ``max_g max(sum_j D[g, j] / rate[g, j], sum_i D[i, g] / rate[i, g])``.
- :func:`matching_schedule` (Aurora's ordering): a Birkhoff-von Neumann decomposition of the
  time matrix into matchings; it meets the lower bound exactly.
- :func:`rotation_schedule`: the pairwise-exchange order (round k: ``i -> i + k mod n``).
- :func:`random_order_time`: each sender walks its peers in a random order, one transfer at a
  time, and waits while its next receiver is busy (no incast, no coordination).
- :func:`fair_share_time`: every transfer starts at once and the ports share their bandwidth
  max-min fairly (the naive all-to-all, where receivers are incast points).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_REL_EPS = 1e-12


def check_traffic(traffic: np.ndarray, bandwidth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(traffic, bandwidth)`` as float arrays, or ValueError naming the problem."""
    d = np.asarray(traffic, dtype=float)
    bw = np.asarray(bandwidth, dtype=float)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"traffic must be a square [gpus, gpus] matrix, got shape {d.shape}")
    if bw.shape != (d.shape[0],):
        raise ValueError(f"bandwidth needs one value per GPU ({d.shape[0]}), got {bw.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("traffic holds finite byte counts >= 0")
    if not np.isfinite(bw).all() or (bw <= 0).any():
        raise ValueError(f"bandwidths must be finite and > 0, got {bw.tolist()}")
    d = d.copy()
    np.fill_diagonal(d, 0.0)
    return d, bw


def pair_rates(bandwidth: np.ndarray) -> np.ndarray:
    """``rate[i, j] = min(bandwidth[i], bandwidth[j])`` bytes/s."""
    bw = np.asarray(bandwidth, dtype=float)
    return np.minimum(bw[:, None], bw[None, :])


def time_matrix(traffic: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """Seconds each transfer occupies its two ports."""
    d, bw = check_traffic(traffic, bandwidth)
    return d / pair_rates(bw)


def lower_bound(traffic: np.ndarray, bandwidth: np.ndarray) -> float:
    """The busiest port's busy time: a bound below every ordering's completion time."""
    t = time_matrix(traffic, bandwidth)
    return float(max(t.sum(axis=1).max(initial=0.0), t.sum(axis=0).max(initial=0.0)))


@dataclass(frozen=True)
class Round:
    """One round: ``pairs`` of ``(src, dst, bytes)``, no GPU twice as a sender nor twice as a
    receiver, all running for ``duration`` seconds."""

    duration: float
    pairs: tuple[tuple[int, int, float], ...]


@dataclass
class RoundSchedule:
    """Rounds run one after another; ``time`` is their total duration plus ``round_latency``
    per round (a synchronisation cost, 0 by default)."""

    rounds: list[Round] = field(default_factory=list)
    round_latency: float = 0.0

    @property
    def time(self) -> float:
        return sum(r.duration for r in self.rounds) + self.round_latency * len(self.rounds)

    def delivered(self, gpus: int) -> np.ndarray:
        """Bytes moved per (src, dst) over all rounds."""
        out = np.zeros((gpus, gpus))
        for r in self.rounds:
            for i, j, b in r.pairs:
                out[i, j] += b
        return out


def _repair_matching(support: np.ndarray, match: np.ndarray) -> bool:
    """Complete ``match`` (row -> column, -1 when unmatched; edges no longer in ``support``
    are dropped first) to a perfect matching on ``support > 0`` by augmenting paths (Kuhn),
    trying each row's largest entries first. False when none exists."""
    n = support.shape[0]
    rows = np.arange(n)
    ok = match >= 0
    ok[ok] = support[rows[ok], match[ok]] > 0
    match[~ok] = -1
    owner = np.full(n, -1)
    owner[match[match >= 0]] = rows[match >= 0]
    prefs = [
        [int(j) for j in np.argsort(-support[i], kind="stable") if support[i, j] > 0]
        for i in range(n)
    ]

    def augment(i: int, seen: np.ndarray) -> bool:
        for j in prefs[i]:
            if seen[j]:
                continue
            seen[j] = True
            if owner[j] < 0 or augment(int(owner[j]), seen):
                owner[j], match[i] = i, j
                return True
        return False

    return all(match[i] >= 0 or augment(i, np.zeros(n, dtype=bool)) for i in range(n))


def matching_schedule(
    traffic: np.ndarray, bandwidth: np.ndarray, *, round_latency: float = 0.0
) -> RoundSchedule:
    """Aurora's ordering: rounds of matchings that finish in exactly :func:`lower_bound`.

    The time matrix is padded to a matrix whose rows and columns all sum to the bound ``L``
    (the 2n x 2n construction ``[[T, diag(L - rows)], [diag(L - cols), T^T]]``); by Birkhoff-
    von Neumann it is ``L`` times a convex combination of permutations, found one perfect
    matching at a time (each removes at least one entry, so at most ``4 n^2`` rounds). Each
    permutation restricted to real GPU pairs is a round."""
    d, bw = check_traffic(traffic, bandwidth)
    n = d.shape[0]
    t = d / pair_rates(bw)
    bound = lower_bound(d, bw)
    sched = RoundSchedule(round_latency=round_latency)
    if bound <= 0:
        return sched
    m = np.zeros((2 * n, 2 * n))
    m[:n, :n] = t
    m[:n, n:] = np.diag(bound - t.sum(axis=1))
    m[n:, :n] = np.diag(bound - t.sum(axis=0))
    m[n:, n:] = t.T
    eps = _REL_EPS * bound * n
    m[m < eps] = 0.0
    remaining = bound
    rates = pair_rates(bw)
    perm = np.full(2 * n, -1)  # warm start: each round keeps the previous round's live edges
    rows = np.arange(2 * n)
    while remaining > eps:
        if not _repair_matching(m, perm):  # only float drift can leave such a residue
            raise RuntimeError(f"no perfect matching with {remaining:.3g} s left to schedule")
        w = float(min(m[rows, perm].min(), remaining))
        m[rows, perm] -= w
        m[m < eps] = 0.0
        remaining -= w
        pairs = tuple(
            (i, int(perm[i]), w * float(rates[i, perm[i]]))
            for i in range(n)
            if perm[i] < n and t[i, perm[i]] > 0
        )
        if pairs:
            sched.rounds.append(Round(w, pairs))
    _settle(sched, d)
    return sched


def _settle(sched: RoundSchedule, traffic: np.ndarray) -> None:
    """Make the bytes of each pair add up to the traffic exactly (the decomposition's float
    drift is at the 1e-12 level): the last round of each pair carries the remainder."""
    n = traffic.shape[0]
    sent = sched.delivered(n)
    last: dict[tuple[int, int], int] = {}
    for k, r in enumerate(sched.rounds):
        for i, j, _ in r.pairs:
            last[(i, j)] = k
    for (i, j), k in last.items():
        r = sched.rounds[k]
        fix = traffic[i, j] - sent[i, j]
        pairs = tuple((a, b, max(0.0, x + fix) if (a, b) == (i, j) else x) for a, b, x in r.pairs)
        sched.rounds[k] = Round(r.duration, pairs)


def rotation_schedule(
    traffic: np.ndarray, bandwidth: np.ndarray, *, round_latency: float = 0.0
) -> RoundSchedule:
    """Pairwise exchange: in round ``k = 1..n-1`` GPU ``i`` sends to ``(i + k) mod n``; a round
    lasts as long as its slowest transfer."""
    d, bw = check_traffic(traffic, bandwidth)
    n = d.shape[0]
    t = d / pair_rates(bw)
    sched = RoundSchedule(round_latency=round_latency)
    for k in range(1, n):
        dst = (np.arange(n) + k) % n
        dur = float(t[np.arange(n), dst].max())
        pairs = tuple((i, int(dst[i]), float(d[i, dst[i]])) for i in range(n) if d[i, dst[i]] > 0)
        if pairs:
            sched.rounds.append(Round(dur, pairs))
    return sched


def random_order_time(
    traffic: np.ndarray, bandwidth: np.ndarray, *, rng: np.random.Generator
) -> float:
    """Completion time when each sender sends to its peers one at a time in a random order and
    a busy receiver makes the sender wait (served first come, first served; ties by sender
    index). No port carries two transfers at once, but nobody plans the order."""
    d, bw = check_traffic(traffic, bandwidth)
    t = d / pair_rates(bw)
    n = d.shape[0]
    queues = [[int(j) for j in rng.permutation(n) if t[i, j] > 0] for i in range(n)]
    send_free = np.zeros(n)  # when each sender is next idle
    recv_free = np.zeros(n)
    waiting_since = np.zeros(n)  # when the sender started waiting for its head receiver
    now = 0.0
    finish = 0.0
    while any(queues):
        started = False
        ready = [i for i in range(n) if queues[i] and send_free[i] <= now]
        for i in sorted(ready, key=lambda i: (waiting_since[i], i)):
            j = queues[i][0]
            if recv_free[j] <= now:
                queues[i].pop(0)
                send_free[i] = recv_free[j] = now + t[i, j]
                finish = max(finish, now + t[i, j])
                waiting_since[i] = send_free[i]
                started = True
        if not started:
            future = [x for x in (*send_free, *recv_free) if x > now]
            now = min(future)
    return float(finish)


def fair_share_time(traffic: np.ndarray, bandwidth: np.ndarray) -> float:
    """Completion time when every transfer starts at once and each port's bandwidth is shared
    max-min fairly among its active transfers (recomputed whenever one finishes)."""
    d, bw = check_traffic(traffic, bandwidth)
    left = d.copy()
    now = 0.0
    while True:
        active = left > _REL_EPS * float(d.max())  # relative: bytes may be any unit
        if not active.any():
            return now
        rates = _max_min_rates(active, bw)
        dt = float((left[active] / rates[active]).min())
        left = np.where(active, np.maximum(left - rates * dt, 0.0), 0.0)
        now += dt
        # the transfer(s) that set dt are done; clear float residue
        left[active & (left <= rates * dt * 1e-9)] = 0.0


def _max_min_rates(active: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Progressive filling over the send and receive ports of the active transfers."""
    n = active.shape[0]
    rates = np.zeros((n, n))
    frozen = ~active
    send_cap, recv_cap = bw.astype(float).copy(), bw.astype(float).copy()
    while not frozen.all():
        free = ~frozen
        ns, nr = free.sum(axis=1), free.sum(axis=0)
        share_s = np.where(ns > 0, send_cap / np.maximum(ns, 1), np.inf)
        share_r = np.where(nr > 0, recv_cap / np.maximum(nr, 1), np.inf)
        s_min, r_min = share_s.min(), share_r.min()
        if s_min <= r_min:
            g = int(share_s.argmin())
            flows = [(g, j) for j in range(n) if free[g, j]]
            share = s_min
        else:
            g = int(share_r.argmin())
            flows = [(i, g) for i in range(n) if free[i, g]]
            share = r_min
        for i, j in flows:
            rates[i, j] = share
            frozen[i, j] = True
            send_cap[i] -= share
            recv_cap[j] -= share
    return rates


def check_schedule(
    sched: RoundSchedule, traffic: np.ndarray, bandwidth: np.ndarray, *, rel_tol: float = 1e-9
) -> None:
    """ValueError unless every round is a matching (no GPU sends twice or receives twice), no
    pair moves more bytes than its rate allows in the round's duration, and every byte of
    ``traffic`` is delivered (within ``rel_tol`` of the largest transfer)."""
    d, bw = check_traffic(traffic, bandwidth)
    n = d.shape[0]
    rates = pair_rates(bw)
    tol = rel_tol * float(d.max())
    for k, r in enumerate(sched.rounds):
        if r.duration < 0:
            raise ValueError(f"round {k}: negative duration {r.duration}")
        senders = [i for i, _, _ in r.pairs]
        receivers = [j for _, j, _ in r.pairs]
        if len(set(senders)) != len(senders) or len(set(receivers)) != len(receivers):
            raise ValueError(f"round {k}: a GPU sends or receives twice: {r.pairs}")
        for i, j, b in r.pairs:
            if i == j or not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"round {k}: bad pair ({i}, {j})")
            if b < -tol or b > rates[i, j] * r.duration * (1 + rel_tol) + tol:
                raise ValueError(
                    f"round {k}: {i}->{j} moves {b:.6g} B, more than {rates[i, j]:.6g} B/s x "
                    f"{r.duration:.6g} s"
                )
    missing = np.abs(sched.delivered(n) - d)
    if missing.max(initial=0.0) > tol:
        src, dst = np.unravel_index(int(missing.argmax()), missing.shape)
        got = sched.delivered(n)[src, dst]
        raise ValueError(f"{src}->{dst}: delivered {got:.6g} of {d[src, dst]:.6g} B")


def port_bound(traffic: np.ndarray, bandwidth: np.ndarray) -> float:
    """The busiest port's bytes over its bandwidth: a bound below every scheme, including
    ones where a port talks to several peers at once (:func:`fair_share_time`)."""
    d, bw = check_traffic(traffic, bandwidth)
    return float(max((d.sum(axis=1) / bw).max(initial=0.0), (d.sum(axis=0) / bw).max(initial=0.0)))

"""Preble's global scheduler: the E2 (exploit + explore) router with post-assignment
rebalancing and prefill/decode balancing (Srivatsa et al., ICLR'25; code WukLab/preble).

For each request, with ``n_hit`` the longest prefix any replica caches (in the router's own
model, :class:`~artifacts.preble.prefix_tree.GlobalPrefixTree`) and ``n_new`` the rest:

1. **exploit** if ``n_hit > n_new``: among the replicas where that holds for their own cached
   prefix (or the replicas rebalancing pinned the prefix to), the one of lowest cost;
2. **prefill/decode balance** (``pd_balance``): else, if some replicas are decode-heavy (a
   windowed prefix-hit ratio >= ``pd_threshold``, 0.7) and others are not, the prefill-heavy
   request goes to the decode-heavy one of lowest cost. (The authors' server sends it to the
   argmax replica; with a workload whose prompts mostly share prefixes every replica is above
   the threshold and that sent every non-exploited request to one replica, which rebalancing
   then had to undo. Choosing by cost among the decode-heavy replicas, and not at all when every
   replica is one, keeps the rule's intent. Their released server passes zeros for the hit
   ratios, so the rule never fires there.)
3. **explore**: else the replica of lowest cost over all.

The cost of replica ``i`` is ``L_i + M_i + P_i``:

- ``L_i``, load: over the live request groups ``v`` assigned to ``i`` (rebalancing's pin, else
  the replicas modelled to hold ``v``), ``miss_v * count_v * T_prefill(v) / |assigned(v)|``,
  plus the decode work of the requests in flight on ``i`` whose prefix is still assigned to
  ``i``: each one's expected output length (the windowed mean of observed output lengths; its
  ``max_tokens`` until one is observed) times ``tpot_s``. Like the authors' accounting, a
  group moved away takes its in-flight decode work with it at once; otherwise a move cannot
  lower the heavy replica's load and rebalancing repeats after every request;
- ``M_i``, eviction (``eviction_cost``): for the LRU victims ``i`` would evict to fit the
  request's uncached tokens, ``miss_v * count_v * T_prefill(v)`` of those heading a live group
  (the authors' choice: a victim without recent requests costs nothing);
- ``P_i`` (``include_prefill_cost``): the prefill time of the request's tokens ``i`` does not
  cache. The paper includes it; the released code sets it to 0 (``recom_costs`` are zeros).

**Rebalancing** (``rebalance``): once ``rebalance_after * #replicas`` requests were routed,
after each one: sort replicas by load (groups with at least 2 requests in the window, as the
authors do); while the heaviest has >= ``imbalance_ratio`` (1.5) x the lightest's load, move
its cheapest groups (important nodes with >= 2 requests) to the lightest replica while that
does not invert them, by pinning them there (future requests of the prefix go there; the
caches are left alone); when it has a single such group, replicate it instead (pin it to both).
Then the next heaviest is paired with the (updated) lightest. ``rebalance_interval_s``
(default 0, as released; the authors left a 10 s version commented out) skips passes until
that long after the last pass that moved something: the imbalance check runs on loads that
in-flight decode work dominates, so without it groups can move back and forth.

Simplified from the authors' code (global_scheduler_with_time.py, global_lru_cache.py):

- ``n_hit`` is the longest prefix some replica *caches* in the router's model; the authors use
  the longest prefix the tree has *seen* (their tree never forgets a node, it only marks it
  evicted) and choose among the replicas that received that prefix within the window;
- a request's hit tokens for the miss rate are its cached tokens on the chosen replica in the
  model; the authors count every token the tree had seen before as a hit, whatever replica;
- the decode term counts each in-flight request once per replica (the authors sum over every
  important node on its path, counting nested ones several times), with one static
  ``tpot_s`` (they use the median of measured TPOTs per GPU) and one router-wide window of
  output lengths (they keep them per important node);
- eviction is modelled on every placement (their ``enable_eviction`` defaults to off) and
  ``M_i`` evicts what the request really needs, ``used + uncached - capacity`` (they assume a
  full cache and evict the request's last-node length), skipping referenced nodes;
- replication of a single hot group happens whenever it is the only candidate and the
  imbalance holds; the authors also require its TTFT to be rising (second half of the window
  averaging >= 2x the first), which a router fed only arrivals and finishes cannot observe;
- the router models prompt tokens only: a replica's cache also holds generated tokens and
  running requests' KV, so pass a capacity somewhat below its KV pool.

Deterministic: every argmin breaks ties by replica index; groups and LRU victims have fixed
orders (creation order, then access time and node creation order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.cluster.router import ROUTERS, ReplicaView, Router, RouteRequest

from .prefix_tree import GlobalPrefixTree, PrefixMatch, PrefixNode, WindowStats

PREBLE_A6000_CAPACITY_TOKENS = 198_516
"""Tokens the authors' global scheduler assumes each GPU caches (Mistral-7B on an A6000)."""


class PrefillCost(Protocol):
    """Costs E2 needs: ``prefill_s(n_tokens, context)`` is the seconds to prefill ``n_tokens``
    after ``context`` cached tokens (0 for ``n_tokens <= 0``); ``tpot_s`` the seconds per
    output token of a running request."""

    tpot_s: float

    def prefill_s(self, n_tokens: int, context: int) -> float: ...


@dataclass(frozen=True)
class E2Costs:
    """A :class:`PrefillCost` from a prefill-time function and a TPOT; prefill times are
    memoized (E2 asks for the same segments over and over)."""

    prefill_fn: Callable[[int, int], float]
    tpot_s: float
    name: str = ""
    _memo: dict[tuple[int, int], float] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not self.tpot_s >= 0:
            raise ValueError(f"tpot_s must be >= 0, got {self.tpot_s}")

    def prefill_s(self, n_tokens: int, context: int) -> float:
        if n_tokens <= 0:
            return 0.0
        key = (int(n_tokens), int(context))
        t = self._memo.get(key)
        if t is None:
            t = self._memo[key] = float(self.prefill_fn(*key))
        return t

    @classmethod
    def from_cost_model(
        cls, cost_model: object, *, decode_context: int = 2048, chunk_tokens: int | None = None
    ) -> E2Costs:
        """Costs from a :class:`core.sim.cost.CostModel` (anything with
        ``step_time(prefill_chunks, decode_contexts)``): a prefill is one step over the chunk
        ``(n_tokens, context)``, or consecutive ``chunk_tokens``-token chunks when given (as a
        chunked-prefill replica runs it); ``tpot_s`` is one decode step of one sequence with
        ``decode_context`` cached tokens (the per-token latency of a lightly loaded replica)."""
        step = cost_model.step_time  # type: ignore[attr-defined]
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")

        def prefill(n: int, ctx: int) -> float:
            if chunk_tokens is None:
                return step(prefill_chunks=[(n, ctx)])
            total, done = 0.0, 0
            while done < n:
                k = min(chunk_tokens, n - done)
                total += step(prefill_chunks=[(k, ctx + done)])
                done += k
            return total

        return cls(
            prefill,
            float(step(decode_contexts=[decode_context])),
            name=f"cost-model:{cost_model!r}",
        )

    @classmethod
    def preble_a6000_mistral7b(cls, *, decode_context: int = 2048) -> E2Costs:
        """The authors' fitted times for Mistral-7B on an A6000 (SGLang + FlashInfer,
        ``benchmarks/exp_configs/model_equations.py``); see :func:`preble_mistral7b_a6000_ms`.
        ``tpot_s`` is their decode equation for one sequence at ``decode_context``."""
        return cls(
            lambda n, ctx: preble_mistral7b_a6000_ms(n, ctx) / 1e3,
            preble_mistral7b_a6000_ms(1, decode_context, decode=True) / 1e3,
            name="preble-a6000-mistral-7b",
        )


def preble_mistral7b_a6000_ms(n_tokens: int, context: int, *, decode: bool = False) -> float:
    """Milliseconds of one forward of ``n_tokens`` new tokens after ``context`` cached ones for
    one sequence, by the authors' fit for Mistral-7B on an A6000:

    - linear layers: ``0.1084 n + 4.21`` for ``n >= 384``, 22 below 192, and their quadratic
      ``-118 + 1.25 n - 2.56e-3 n^2`` between. That quadratic is negative from n ~ 360 to 383
      (it peaks at 34.6 ms near 244 and meets the line nowhere); we floor it at the 22 ms
      constant, the one change to their numbers;
    - attention over the total context ``t = context + n``: ``1.86e-4 t + 0.159`` (0.32 when
      ``t <= 1024``), halved for a prefill of at most 1,024 tokens (their unique-KV rule);
    - prefill only, when ``n * t > 2^20``: ``1.13e-3 n + 1.75e-3 t + 2.19e-6 n t``;
    - all divided by 0.9, as the authors do for both prefill and decode.
    """
    n = int(n_tokens)
    total = int(context) + n
    if n >= 384:
        linear = 0.10842571 * n + 4.209777054806409
    elif n >= 192:
        linear = max(22.0, -118 + 1.25 * n - 2.56e-3 * n * n)
    else:
        linear = 22.0
    if total <= 1024:
        attention = 0.32
    else:
        attention = 1.86e-4 * total + 0.159
        if not decode and n <= 1024:
            attention /= 2
    extend = 0.0
    if not decode and n * total > 1024 * 1024:
        extend = 1.13e-3 * n + 1.75e-3 * total + 2.19e-6 * n * total
    return (linear + attention + extend) / 0.9


@dataclass(frozen=True)
class E2Decision:
    """Why the router chose ``replica``: ``kind`` is ``"exploit"``, ``"pd-balance"`` or
    ``"explore"``; ``candidates`` the replicas it chose among; ``costs[i]`` the cost
    ``L + M + P`` of each candidate."""

    kind: str
    replica: int
    n_hit: int
    n_new: int
    candidates: tuple[int, ...]
    costs: dict[int, float] | None


@dataclass(frozen=True)
class Move:
    """One rebalancing action: the request group headed by ``node`` pinned from ``source`` to
    ``target`` (``"move"``), or to both (``"replicate"``)."""

    kind: str
    node: PrefixNode
    source: int
    target: int


@dataclass
class _InFlight:
    replica: int
    node: PrefixNode
    max_tokens: int


class E2Router(Router):
    """Preble's E2 global scheduler; see the module doc for the algorithm and what differs
    from the authors' code.

    Contract: ``route`` returns an index into ``replicas`` and reads nothing from them but their
    number: the router's model of each replica's cache (``capacity_tokens`` per replica, one
    int for all) and load comes from its own decisions and ``on_finish`` calls, so every
    routed request must be finished through ``on_finish`` exactly once (an unknown request id
    is ignored). The number of replicas is ``len(capacity_tokens)``, else ``num_replicas``,
    else fixed by the first ``route``; a call with a different number raises ValueError.
    Deterministic.

    ``costs`` defaults to the authors' Mistral-7B/A6000 equations
    (:meth:`E2Costs.preble_a6000_mistral7b`) and ``capacity_tokens`` to their per-GPU token
    budget; both should describe the replicas actually served. Flags switch off each step:
    ``pd_balance``, ``rebalance``, ``include_prefill_cost`` (``P_i``), ``eviction_cost``
    (``M_i``). ``window_s``, ``pd_threshold``, ``imbalance_ratio``, ``rebalance_after`` (per
    replica) and ``rebalance_interval_s`` are the module doc's constants.

    Introspection: :attr:`last_decision`, :attr:`decisions` (counts per kind), :attr:`moves`,
    :attr:`tree` (the model), :meth:`loads`.
    """

    name = "e2"
    views_only = True  # reads nothing from replicas but their number

    def __init__(
        self,
        capacity_tokens: int | Sequence[int] = PREBLE_A6000_CAPACITY_TOKENS,
        costs: PrefillCost | None = None,
        *,
        window_s: float = 180.0,
        pd_balance: bool = True,
        rebalance: bool = True,
        include_prefill_cost: bool = True,
        eviction_cost: bool = True,
        pd_threshold: float = 0.7,
        imbalance_ratio: float = 1.5,
        rebalance_after: int = 50,
        rebalance_interval_s: float = 0.0,
        num_replicas: int | None = None,
    ) -> None:
        if not 0.0 <= pd_threshold <= 1.0:
            raise ValueError(f"pd_threshold must be in [0, 1], got {pd_threshold}")
        if not imbalance_ratio >= 1.0:
            raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
        if rebalance_after < 0 or rebalance_interval_s < 0:
            raise ValueError(
                "rebalance_after and rebalance_interval_s must be >= 0, got "
                f"{rebalance_after} and {rebalance_interval_s}"
            )
        self.capacity_tokens = (
            capacity_tokens
            if isinstance(capacity_tokens, int)
            else tuple(int(c) for c in capacity_tokens)
        )
        self.costs: PrefillCost = costs if costs is not None else E2Costs.preble_a6000_mistral7b()
        self.window_s = float(window_s)
        self.pd_balance = pd_balance
        self.rebalance = rebalance
        self.include_prefill_cost = include_prefill_cost
        self.eviction_cost = eviction_cost
        self.pd_threshold = pd_threshold
        self.imbalance_ratio = imbalance_ratio
        self.rebalance_after = rebalance_after
        self.rebalance_interval_s = float(rebalance_interval_s)
        self._last_rebalance: float | None = None
        self.tree: GlobalPrefixTree | None = None
        if not isinstance(self.capacity_tokens, int):
            num_replicas = len(self.capacity_tokens) if num_replicas is None else num_replicas
        if num_replicas is not None:
            self.tree = GlobalPrefixTree(num_replicas, self.capacity_tokens, window_s)
        self.routed = 0
        self.decisions = {"exploit": 0, "pd-balance": 0, "explore": 0}
        self.moves: list[Move] = []
        self.last_decision: E2Decision | None = None
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_max_tokens = 0
        self._outputs: deque[tuple[float, int]] = deque()
        self._outputs_sum = 0

    # -- Router -----------------------------------------------------------------------------

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaView], now: float) -> int:
        tree = self._tree_for(len(replicas))
        self._expire(now)
        m = tree.match(req.token_ids)
        n = len(req.token_ids)
        n_hit = m.best
        n_new = n - n_hit
        all_replicas = range(tree.num_replicas)

        if n_hit > n_new:
            kind = "exploit"
            pin = self._pin_of(m.path[-1]) if m.path else None
            candidates = (
                sorted(pin) if pin is not None else [i for i in all_replicas if 2 * m.cached[i] > n]
            )
        else:
            hot = self._decode_heavy_replicas() if self.pd_balance else []
            kind, candidates = (
                ("pd-balance", hot)
                if 0 < len(hot) < tree.num_replicas
                else ("explore", list(all_replicas))
            )
        loads = self.loads()
        costs = {i: loads[i] + self._placement_cost(i, m, n) for i in candidates}
        choice = min(candidates, key=lambda i: (costs[i], i))
        self.last_decision = E2Decision(kind, choice, n_hit, n_new, tuple(candidates), costs)
        self.decisions[kind] += 1
        self.place(req, choice, now, match=m)
        if (
            self.rebalance
            and self.routed >= self.rebalance_after * tree.num_replicas
            and (
                self._last_rebalance is None
                or now - self._last_rebalance >= self.rebalance_interval_s
            )
        ):
            if self.rebalance_now():
                self._last_rebalance = now
        return choice

    def on_finish(
        self, replica: int, request_id: str, now: float, *, output_tokens: int | None = None
    ) -> None:
        f = self._inflight.pop(request_id, None)
        if f is None:
            return
        assert self.tree is not None
        self.tree.release(f.node, f.replica)
        self._inflight_max_tokens -= f.max_tokens
        if output_tokens is not None:
            self._outputs.append((now, int(output_tokens)))
            self._outputs_sum += int(output_tokens)
        self._expire(now)

    # -- the model --------------------------------------------------------------------------

    def place(
        self, req: RouteRequest, replica: int, now: float, *, match: PrefixMatch | None = None
    ) -> None:
        """Record that ``req`` runs on ``replica`` (``route`` does this for its choice; call it
        directly to replay fixed placements): model the prompt cached and referenced there,
        count it in the window, track it until ``on_finish``."""
        tree = self._require_tree()
        if not 0 <= replica < tree.num_replicas:
            raise ValueError(f"replica {replica} out of range (0..{tree.num_replicas - 1})")
        if req.request_id in self._inflight:
            raise ValueError(f"request {req.request_id!r} is already in flight")
        m = match if match is not None else tree.match(req.token_ids)
        node = tree.insert(req.token_ids, replica, now)
        tree.record(node, replica, m.cached[replica], len(req.token_ids), now)
        self._inflight[req.request_id] = _InFlight(replica, node, int(req.max_tokens))
        self._inflight_max_tokens += int(req.max_tokens)
        self.routed += 1

    @property
    def num_replicas(self) -> int:
        return self._require_tree().num_replicas

    def expected_output_tokens(self) -> float | None:
        """The mean output length of the requests finished within the window (None if none)."""
        return self._outputs_sum / len(self._outputs) if self._outputs else None

    def loads(self, min_count: int = 1) -> list[float]:
        """``L_i`` for each replica: the prefill work of the live groups (with at least
        ``min_count`` requests in the window) assigned to it plus the decode work in flight."""
        tree = self._require_tree()
        loads = [0.0] * tree.num_replicas
        for g in tree.groups():
            if g.count < min_count:
                continue
            v = g.node
            assert v is not None
            assigned = self._assigned(v)
            if assigned:
                share = self._group_prefill(g) / len(assigned)
                for r in assigned:
                    loads[r] += share
        out = self.expected_output_tokens()
        tpot = self.costs.tpot_s
        for f in self._inflight.values():
            pin = self._pin_of(f.node)
            if pin is None or f.replica in pin:  # pinned away: the authors stop counting it
                loads[f.replica] += (out if out is not None else f.max_tokens) * tpot
        return loads

    def rebalance_now(self) -> list[Move]:
        """One rebalancing pass (see the module doc); the moves made (also appended to
        :attr:`moves`)."""
        tree = self._require_tree()
        loads = self.loads(min_count=2)
        by_load = sorted(range(tree.num_replicas), key=lambda r: (-loads[r], r))
        order = [[r, loads[r]] for r in by_load]
        made: list[Move] = []
        while len(order) > 1:
            (heavy, lh), (light, ll) = order[0], order[-1]
            if lh <= 0 or lh < self.imbalance_ratio * ll:
                break
            cands = sorted(
                (
                    (self._group_cost(g, heavy), g.node.uid, g)
                    for g in tree.groups()
                    if g.count >= 2
                    and g.node is not None
                    and g.node.is_important
                    and heavy in self._assigned(g.node)
                ),
                key=lambda c: (c[0], c[1]),
            )
            if len(cands) == 1:
                cost, _, g = cands[0]
                assert g.node is not None
                assigned = self._assigned(g.node)
                if light not in assigned:  # one group cannot be split by moving: copy it
                    g.pinned = frozenset(assigned | {light})
                    made.append(Move("replicate", g.node, heavy, light))
                    lh, ll = lh - cost / 2, ll + cost / 2
            else:
                for cost, _, g in cands:
                    if lh - cost < ll + cost:
                        break
                    assert g.node is not None
                    self._pin_subtree(g, light)
                    made.append(Move("move", g.node, heavy, light))
                    lh, ll = lh - cost, ll + cost
                    if lh < self.imbalance_ratio * ll:
                        break
            order[0][1], order[-1][1] = lh, ll
            order = order[1:]
        self.moves.extend(made)
        return made

    # -- internals --------------------------------------------------------------------------

    def _tree_for(self, num_replicas: int) -> GlobalPrefixTree:
        if self.tree is None:
            self.tree = GlobalPrefixTree(num_replicas, self.capacity_tokens, self.window_s)
        elif self.tree.num_replicas != num_replicas:
            raise ValueError(
                f"E2Router models {self.tree.num_replicas} replicas, got {num_replicas}"
            )
        return self.tree

    def _require_tree(self) -> GlobalPrefixTree:
        if self.tree is None:
            raise RuntimeError(
                "the number of replicas is not known yet: pass capacities per "
                "replica or num_replicas, or route() first"
            )
        return self.tree

    def _expire(self, now: float) -> None:
        assert self.tree is not None
        self.tree.expire(now)
        horizon = now - self.window_s
        while self._outputs and self._outputs[0][0] < horizon:
            self._outputs_sum -= self._outputs.popleft()[1]

    def _pin_of(self, node: PrefixNode) -> frozenset[int] | None:
        """The replicas rebalancing pinned the nearest pinned ancestor-or-self group to."""
        v: PrefixNode | None = node
        while v is not None:
            if v.stats is not None and v.stats.pinned is not None:
                return v.stats.pinned
            v = v.parent
        return None

    def _assigned(self, node: PrefixNode) -> set[int]:
        pin = self._pin_of(node)
        return set(pin) if pin is not None else set(node.holders)

    def _group_prefill(self, g: WindowStats) -> float:
        v = g.node
        assert v is not None
        return g.miss_rate * g.count * self.costs.prefill_s(len(v.segment), v.start)

    def _group_cost(self, g: WindowStats, replica: int) -> float:
        """What moving group ``g`` off ``replica`` takes from its load (prefill share and the
        decode of its requests in flight there)."""
        v = g.node
        assert v is not None
        share = self._group_prefill(g) / max(1, len(self._assigned(v)))
        out = self.expected_output_tokens()
        if out is None:
            out = self._inflight_max_tokens / len(self._inflight) if self._inflight else 0.0
        return share + v.refs[replica] * out * self.costs.tpot_s

    def _placement_cost(self, replica: int, m: PrefixMatch, n: int) -> float:
        """``M_i + P_i`` of placing an ``n``-token prompt with match ``m`` on ``replica``."""
        tree = self.tree
        assert tree is not None
        cached = m.cached[replica]
        cost = 0.0
        if self.include_prefill_cost:
            cost += self.costs.prefill_s(n - cached, cached)
        if self.eviction_cost:
            need = tree.used[replica] + (n - cached) - tree.capacity[replica]
            if need > 0:
                held = [v for v in m.path if replica in v.holders]
                for v in tree.eviction_victims(replica, need, protect=held):
                    if v.stats is not None:
                        cost += self._group_prefill(v.stats)
        return cost

    def _decode_heavy_replicas(self) -> list[int]:
        """The replicas whose windowed hit ratio is >= ``pd_threshold``."""
        tree = self.tree
        assert tree is not None
        ratios = [tree.replica_hit_ratio(r) for r in range(tree.num_replicas)]
        return [r for r, x in enumerate(ratios) if x is not None and x >= self.pd_threshold]

    def _pin_subtree(self, g: WindowStats, replica: int) -> None:
        """Pin ``g`` to ``replica`` alone and drop the pins below it (its whole subtree follows,
        as the authors reassign every descendant)."""
        assert g.node is not None
        stack = list(g.node.children.values())
        while stack:
            v = stack.pop()
            if v.stats is not None:
                v.stats.pinned = None
            stack.extend(v.children.values())
        g.pinned = frozenset({replica})


# ``make_router("e2")`` once this module is imported: E2 plugs into core's router registry
# (core.cluster.router never imports an artifact).
ROUTERS[E2Router.name] = E2Router

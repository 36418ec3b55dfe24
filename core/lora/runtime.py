"""LoRA adapters served on a :class:`~core.model.base.CausalLM`: device slots, a host cache, the
unmerged (multi-adapter) forward and the merged mode.

:class:`LoRARuntime` hooks every linear layer the checkpoint names (fused ``qkv_proj`` and
``gate_up_proj`` are covered slice by slice: ``q_proj``, ``k_proj``, ``v_proj`` ...; the LM head
is not adapted). Adapters live in ``max_loras`` device slots of rank ``max_lora_rank``
(zero-padded), loaded from a host cache of parsed adapters, which is read from disk on a miss
and kept within ``max_cpu_loras`` adapters and ``host_memory_bytes``; both tiers evict the least
recently used adapter not needed by the current step.

Each step the runner calls :meth:`LoRARuntime.prepare` with the adapter of each request's rows:

- **unmerged** (default): every row adds its own adapter's ``(x A^T) B^T`` to each linear's
  output through :mod:`core.kernels.lora` (segmented GEMM, or gather-BMM with
  ``kernel="bgmv"``); rows without an adapter run the base model;
- **merged** (``merged=<name>``): ``W += B A`` is folded into the base weights once, so the
  step costs what the base model costs; every row must then use that adapter. Switching back
  restores the saved base weights bit for bit (``exact_unmerge``, the default; otherwise
  ``W -= B A``, equal within rounding). Packed weights of the linear backend are repacked.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from core.kernels.linear import Linear
from core.kernels.lora import (
    Segment,
    bgmv_expand,
    bgmv_shrink,
    segments_of,
    sgmv_expand,
    sgmv_shrink,
)
from core.model.base import CausalLM

from .adapter import AdapterFormatError, LoRAAdapter, load_adapter
from .request import LoRARequest

__all__ = ["LinearSlice", "LoRAPoolError", "LoRARuntime", "LoRAStats", "adaptable_linears"]


class LoRAPoolError(RuntimeError):
    """A step needs more distinct adapters than there are device slots, or an adapter does not
    fit the slots (rank above ``max_lora_rank``)."""


@dataclass(frozen=True)
class LinearSlice:
    """The rows ``offset .. offset + size`` of one of our linears' outputs, which are the Hugging
    Face module ``hf_module`` (a fused ``qkv_proj`` has three: ``q_proj``, ``k_proj``,
    ``v_proj``)."""

    hf_module: str
    offset: int
    size: int


def adaptable_linears(model: CausalLM) -> list[tuple[str, Linear, list[LinearSlice]]]:
    """Every linear layer of ``model`` a LoRA adapter may adapt (all the checkpoint names but
    the LM head), as ``(our module name, module, its HF slices)``."""
    out = []
    for ours, parts in model.hf_weight_map().items():
        if not ours.endswith(".weight") or ours.startswith("lm_head"):
            continue
        name = ours.removesuffix(".weight")
        module = model.get_submodule(name)
        if not isinstance(module, Linear):
            continue
        slices, offset = [], 0
        for hf, rows in parts:
            size = module.out_features - offset if rows is None else rows
            slices.append(LinearSlice(hf.removesuffix(".weight"), offset, size))
            offset += size
        out.append((name, module, slices))
    return out


@dataclass
class _Target:
    """One hooked linear: its slices and their stacked slot weights (``a`` holds every slice's
    ``A`` one after another along the rank axis, so the shrink is one product)."""

    name: str
    module: Linear
    slices: list[LinearSlice]
    a: torch.Tensor  # [S, n_slices * R, in]
    b: list[torch.Tensor]  # per slice [S, size, R]
    backup: torch.Tensor | None = None  # base weight while merged (exact unmerge)


@dataclass
class LoRAStats:
    """Counters of the pool and of mode switches, with the time merges and unmerges took."""

    disk_loads: int = 0
    slot_loads: int = 0
    slot_evictions: int = 0
    host_evictions: int = 0
    merges: int = 0
    unmerges: int = 0
    switch_s: float = 0.0
    switch_times: list[float] = field(default_factory=list)


class LoRARuntime:
    """Adapters on ``model`` (see the module docstring). Contract: call :meth:`prepare` before
    every forward with one :class:`~core.lora.request.LoRARequest` (or None) per row group;
    the forward then applies exactly those adapters. Not thread-safe (one engine owns it)."""

    def __init__(
        self,
        model: CausalLM,
        *,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        host_memory_bytes: int | None = None,
        kernel: str = "sgmv",
        exact_unmerge: bool = True,
    ) -> None:
        if max_loras < 1 or max_lora_rank < 1:
            raise ValueError(
                f"max_loras and max_lora_rank must be >= 1 ({max_loras}, {max_lora_rank})"
            )
        if kernel not in ("sgmv", "bgmv"):
            raise ValueError(f"kernel must be 'sgmv' or 'bgmv', got {kernel!r}")
        self.model = model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max_cpu_loras if max_cpu_loras is not None else max(max_loras, 64)
        self.host_memory_bytes = host_memory_bytes
        self.kernel = kernel
        self.exact_unmerge = exact_unmerge
        self.stats = LoRAStats()
        self.merged: str | None = None
        self._merged_slot = -1
        self._targets: dict[str, _Target] = {}
        self._by_hf: dict[str, tuple[_Target, int]] = {}
        self._host: OrderedDict[str, LoRAAdapter] = OrderedDict()
        self._slots: OrderedDict[str, int] = OrderedDict()  # adapter name -> slot, LRU first
        self._slot_rank: dict[int, int] = {}
        self._segments: list[Segment] = []
        self._slot_rows: torch.Tensor | None = None
        self._build_targets()

    # -- setup ----------------------------------------------------------------------------------

    def _build_targets(self) -> None:
        model, R, S = self.model, self.max_lora_rank, self.max_loras
        dtype, device = model.dtype, model.device
        for name, module, slices in adaptable_linears(model):
            a = torch.zeros(S, len(slices) * R, module.in_features, dtype=dtype, device=device)
            b = [torch.zeros(S, s.size, R, dtype=dtype, device=device) for s in slices]
            target = _Target(name, module, slices, a, b)
            self._targets[name] = target
            for j, s in enumerate(slices):
                self._by_hf[s.hf_module] = (target, j)
            module.register_forward_hook(self._hook(target))

    @property
    def device_bytes(self) -> int:
        """Bytes of the device slots (all ``max_loras`` of them)."""
        return sum(t.a.nbytes + sum(b.nbytes for b in t.b) for t in self._targets.values())

    @property
    def target_modules(self) -> list[str]:
        """The HF module names an adapter may adapt."""
        return sorted(self._by_hf)

    # -- the forward ----------------------------------------------------------------------------

    def _hook(self, target: _Target):
        def add_lora(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor):
            if not self._segments:
                return None
            x = args[0]
            R = self.max_lora_rank
            if self.kernel == "bgmv":
                assert self._slot_rows is not None
                xa = bgmv_shrink(x, target.a, self._slot_rows)
            else:
                xa = sgmv_shrink(x, target.a, self._segments)
            for j, s in enumerate(target.slices):
                part = xa[:, j * R : (j + 1) * R]
                view = out[:, s.offset : s.offset + s.size]
                if self.kernel == "bgmv":
                    assert self._slot_rows is not None
                    bgmv_expand(part, target.b[j], self._slot_rows, view)
                else:
                    sgmv_expand(part, target.b[j], self._segments, view)
            return out

        return add_lora

    def prepare(
        self,
        loras: Sequence[LoRARequest | None],
        rows: Sequence[int],
        *,
        merged: str | None = None,
    ) -> None:
        """Set up the next forward: group ``i`` of ``rows[i]`` consecutive rows uses adapter
        ``loras[i]`` (None: the base model). ``merged``: run with that adapter folded into the
        weights (every group must use it); None: unmerged. Loads adapters into slots and
        switches mode as needed; raises :class:`LoRAPoolError` when they do not fit."""
        if merged is not None and any(lr is None or lr.lora_name != merged for lr in loras):
            raise LoRAPoolError(f"a merged step on {merged!r} holds rows of other adapters")
        if merged != self.merged:
            self._switch(merged, loras)
        needed = {lr.lora_name: lr for lr in loras if lr is not None}
        if merged is not None:
            needed = {}
        slot_of = self._activate(needed)
        per_row: list[int] = []
        for lr, n in zip(loras, rows, strict=True):
            slot = -1 if lr is None or merged is not None else slot_of[lr.lora_name]
            per_row.extend([slot] * n)
        device = self.model.device
        self._segments = segments_of(per_row, device)
        self._slot_rows = (
            torch.tensor(per_row, dtype=torch.long, device=device)
            if self.kernel == "bgmv" and self._segments
            else None
        )

    def clear(self) -> None:
        """No adapter on the next forward (until :meth:`prepare`)."""
        self._segments, self._slot_rows = [], None

    # -- the pool -------------------------------------------------------------------------------

    def adapter(self, lora: LoRARequest) -> LoRAAdapter:
        """The parsed adapter, from the host cache or read from ``lora.lora_path``."""
        name = lora.lora_name
        if name in self._host:
            self._host.move_to_end(name)
            return self._host[name]
        adapter = load_adapter(lora.lora_path, name, dtype=self.model.dtype)
        self._check_fits(adapter)
        self.stats.disk_loads += 1
        self._host[name] = adapter
        self._evict_host(keep=name)
        return adapter

    def add_adapter(self, adapter: LoRAAdapter) -> None:
        """Put an adapter built in memory into the host cache (as if read from its folder)."""
        self._check_fits(adapter)
        self._host[adapter.name] = adapter.to(dtype=self.model.dtype)
        self._evict_host(keep=adapter.name)

    def _check_fits(self, adapter: LoRAAdapter) -> None:
        if adapter.rank > self.max_lora_rank:
            raise LoRAPoolError(
                f"adapter {adapter.name!r} ({adapter.path}) has rank {adapter.rank} > "
                f"max_lora_rank={self.max_lora_rank}"
            )
        for hf, (a, b) in adapter.weights.items():
            if hf not in self._by_hf:
                raise AdapterFormatError(
                    f"{adapter.path or adapter.name}: adapts {hf!r}, which is not a linear layer "
                    f"of this model (adaptable: {', '.join(self.target_modules[:4])}, ...)"
                )
            target, j = self._by_hf[hf]
            if a.shape[1] != target.module.in_features or b.shape[0] != target.slices[j].size:
                raise AdapterFormatError(
                    f"{adapter.path or adapter.name}: {hf} lora_A {tuple(a.shape)} / lora_B "
                    f"{tuple(b.shape)} do not fit the model's layer "
                    f"({target.module.in_features} -> {target.slices[j].size})"
                )

    def _evict_host(self, keep: str) -> None:
        def over() -> bool:
            total = sum(a.nbytes for a in self._host.values())
            too_big = self.host_memory_bytes is not None and total > self.host_memory_bytes
            return len(self._host) > self.max_cpu_loras or too_big

        while over() and len(self._host) > 1:
            victim = next(n for n in self._host if n != keep)
            del self._host[victim]
            self.stats.host_evictions += 1

    def _activate(self, needed: dict[str, LoRARequest]) -> dict[str, int]:
        if len(needed) > self.max_loras:
            raise LoRAPoolError(
                f"a step needs {len(needed)} adapters but max_loras={self.max_loras}"
            )
        for name, lora in needed.items():
            if name in self._slots:
                self._slots.move_to_end(name)
                continue
            used = set(self._slots.values())
            free = [s for s in range(self.max_loras) if s not in used]
            if free:
                slot = free[0]
            else:
                victim = next(n for n in self._slots if n not in needed and n != self.merged)
                slot = self._slots.pop(victim)
                self.stats.slot_evictions += 1
            self._load_slot(slot, self.adapter(lora))
            self._slots[name] = slot
        return {n: self._slots[n] for n in needed}

    def slot_of(self, name: str) -> int | None:
        return self._slots.get(name)

    def _load_slot(self, slot: int, adapter: LoRAAdapter) -> None:
        R = self.max_lora_rank
        for t in self._targets.values():
            t.a[slot].zero_()
            for b in t.b:
                b[slot].zero_()
        for hf, (a, b) in adapter.weights.items():
            target, j = self._by_hf[hf]
            r = a.shape[0]
            target.a[slot, j * R : j * R + r].copy_(a)
            target.b[j][slot, :, :r].copy_(b)
        self.stats.slot_loads += 1

    # -- merged mode ----------------------------------------------------------------------------

    @torch.inference_mode()
    def merge(self, lora: LoRARequest) -> None:
        """Fold ``lora`` into the base weights (unmerging another one first)."""
        if self.merged == lora.lora_name:
            return
        if self.merged is not None:
            self.unmerge()
        t0 = time.perf_counter()
        slot = self._activate({lora.lora_name: lora})[lora.lora_name]
        R = self.max_lora_rank
        for t in self._targets.values():
            if not bool(t.a[slot].any()):
                continue  # this adapter leaves the layer alone
            w = t.module.weight.data
            if self.exact_unmerge:
                t.backup = w.clone()
            for j, s in enumerate(t.slices):
                delta = t.b[j][slot].float() @ t.a[slot, j * R : (j + 1) * R].float()
                w[s.offset : s.offset + s.size] += delta.to(w.dtype)
            t.module.set_backend(self.model.linear_backend)
        self.merged = lora.lora_name
        self._merged_slot = slot
        self._record_switch(t0, merge=True)

    @torch.inference_mode()
    def unmerge(self) -> None:
        """Restore the base weights (bit for bit with ``exact_unmerge``)."""
        if self.merged is None:
            return
        t0 = time.perf_counter()
        slot, R = self._merged_slot, self.max_lora_rank
        for t in self._targets.values():
            if not bool(t.a[slot].any()):
                continue
            w = t.module.weight.data
            if t.backup is not None:
                w.copy_(t.backup)
                t.backup = None
            else:
                for j, s in enumerate(t.slices):
                    delta = t.b[j][slot].float() @ t.a[slot, j * R : (j + 1) * R].float()
                    w[s.offset : s.offset + s.size] -= delta.to(w.dtype)
            t.module.set_backend(self.model.linear_backend)
        self.merged = None
        self._record_switch(t0, merge=False)

    def _switch(self, merged: str | None, loras: Sequence[LoRARequest | None]) -> None:
        if merged is None:
            self.unmerge()
            return
        lora = next(lr for lr in loras if lr is not None and lr.lora_name == merged)
        self.merge(lora)

    def _record_switch(self, t0: float, *, merge: bool) -> None:
        dt = time.perf_counter() - t0
        if merge:
            self.stats.merges += 1
        else:
            self.stats.unmerges += 1
        self.stats.switch_s += dt
        self.stats.switch_times.append(dt)

"""``LLM``: the offline API, vLLM's shape. ``LLM(model=...).generate(prompts, params)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from core.kv.backend import KVBackend, PagedKVBackend, RadixKVBackend
from core.kv.policies import AdmissionPolicy, EvictionPolicy
from core.lora.request import LoRARequest
from core.lora.runtime import LoRARuntime
from core.lora.scheduler import LoRAScheduler, make_lora_scheduler
from core.model import load_model
from core.model.checkpoint import load_tokenizer
from core.sched.intercept import InterceptPolicy, make_intercept_policy
from core.sched.policies import QueuePolicy, make_policy
from core.sched.scheduler import Scheduler, SchedulerConfig
from core.spec.config import SpeculativeConfig

from .engine import Engine, RequestOutput
from .runner import ModelRunner
from .sampling import PromptLogprobs, Sampler, SamplingParams

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _dtype(d: str | torch.dtype) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    if d not in _DTYPES:
        raise ValueError(f"unknown dtype {d!r} (use one of {', '.join(_DTYPES)})")
    return _DTYPES[d]


class LLM:
    """Load a model and serve batches of prompts with continuous batching.

    - ``model``: a Hugging Face checkpoint directory (config.json + safetensors; a
      tokenizer.json is used when present) or a config (dict / transformers config) for a
      random-initialized model seeded by ``seed``.
    - memory: ``kv_cache_memory`` bytes of KV blocks of ``block_size`` tokens (or exactly
      ``num_kv_blocks``); ``num_host_blocks`` host blocks for swapping;
      ``num_state_slots`` SSM-state slots for hybrid models (live states + checkpoints).
    - prefix caching: ``enable_prefix_caching``; ``prefix_cache="block"`` (vLLM block hashing,
      dense models) or ``"radix"`` (radix tree; the only choice for hybrid models, whose
      checkpoint ``admission`` and ``eviction`` policies plug in here); ``"auto"`` picks.
    - batching: ``max_num_seqs``, ``max_num_batched_tokens``, ``enable_chunked_prefill``,
      ``preemption_mode`` (``"recompute"`` / ``"swap"``), ``queue_policy`` (a
      :class:`~core.sched.policies.QueuePolicy` or a name, see :func:`~core.sched.make_policy`).
    - kernels: ``attention_backend`` (see :mod:`core.kernels.attention`) and
      ``linear_backend``: ``"torch"``, ``"onednn"`` (CPU: weights prepacked for oneDNN, several
      times faster at decode batch sizes, one extra copy of the weights in memory) or None
      (``$SERVELAB_LINEAR_BACKEND``, else oneDNN where it runs; see :mod:`core.kernels.linear`).
    - interceptions (requests that pause for a tool call): ``intercept``, a policy or its name
      (``"preserve"`` by default, ``"vllm"``, ``"improved-discard"``, ``"swap"``, or one an
      imported artifact registered, e.g. ``"infercept"`` after ``import artifacts.infercept``)
      or an import path ``"module:Class"``; see :mod:`core.sched.intercept`.
    - LoRA (vLLM's options): ``enable_lora`` with ``max_loras`` adapters on the device at once,
      of rank up to ``max_lora_rank``, ``max_cpu_loras`` parsed adapters kept on the host;
      ``lora_scheduler`` picks the batching (:func:`core.lora.scheduler.make_lora_scheduler`:
      ``"unmerged"`` by default, ``"merged"``, ``"single"``, or a
      :class:`~core.lora.scheduler.LoRAScheduler` subclass). With block prefix caching the
      adapter is part of the block hashes (requests share KV only with requests of their
      adapter); the radix cache does not key adapters, so it is off with LoRA. See
      docs/core/lora.md.
    - speculative decoding (vLLM's option): ``speculative_config``, e.g. ``{"method":
      "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}``, ``{"model":
      draft_path, "num_speculative_tokens": 4}`` or ``{"method": "suffix", ...}``; see
      :class:`~core.spec.SpeculativeConfig` and docs/core/spec.md. Outputs' ``metrics`` count
      ``num_draft_tokens`` and ``num_accepted_tokens`` per request.
    - parallelism (vLLM's options): ``tensor_parallel_size`` ranks each hold a shard of the model
      and run this same engine loop, rank 0 sampling for all; start one process per rank
      (``torchrun --nproc-per-node N``); ``enable_expert_parallel`` places Mixtral's experts
      whole on ranks instead of sharding each. See :mod:`core.dist` and docs/core/dist.md.
    Policy names are resolved before the model loads: an unknown one raises ValueError at once.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | dict[str, Any] | Any,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        seed: int = 0,
        block_size: int = 16,
        kv_cache_memory: int = 512 * 2**20,
        num_kv_blocks: int | None = None,
        num_host_blocks: int = 0,
        num_state_slots: int | None = None,
        enable_prefix_caching: bool = True,
        prefix_cache: str = "auto",
        admission: AdmissionPolicy | None = None,
        eviction: EvictionPolicy | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        max_model_len: int | None = None,
        enable_chunked_prefill: bool = True,
        preemption_mode: str = "recompute",
        queue_policy: str | QueuePolicy = "fcfs",
        attention_backend: str | None = None,
        linear_backend: str | None = None,
        intercept: InterceptPolicy | str | None = None,
        enable_lora: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        lora_scheduler: str | type[LoRAScheduler] = "unmerged",
        speculative_config: dict[str, Any] | SpeculativeConfig | None = None,
        tensor_parallel_size: int = 1,
        enable_expert_parallel: bool = False,
    ) -> None:
        spec_cfg = (
            SpeculativeConfig.from_dict(speculative_config)
            if speculative_config is not None
            else None
        )
        if spec_cfg is not None and enable_lora:
            raise ValueError("speculative_config and enable_lora cannot be combined yet")
        queue = make_policy(queue_policy)
        if enable_lora:
            make_lora_scheduler(lora_scheduler)  # an unknown name fails before the model loads
        icp_policy = make_intercept_policy(intercept)
        torch_dtype = _dtype(dtype)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        comm = None
        if tensor_parallel_size > 1:
            if spec_cfg is not None or enable_lora:
                raise ValueError(
                    "tensor_parallel_size > 1 does not combine with LoRA or speculation yet"
                )
            from core.dist.runner import join_for_engine

            comm = join_for_engine(tensor_parallel_size)
            device = comm.device
        self.model, self.config = load_model(model, dtype=torch_dtype, device=device, seed=seed)
        if comm is not None:
            from core.dist.tp import tensor_parallel

            tensor_parallel(self.model, comm, moe="ep" if enable_expert_parallel else "tp")
        if attention_backend is not None:
            self.model.set_attention_backend(attention_backend)
        self.model.set_linear_backend(linear_backend)
        self.tokenizer = (
            load_tokenizer(model)
            if isinstance(model, (str, os.PathLike)) and Path(model).is_dir()
            else None
        )
        # every EOS id the config lists ends a request (Llama 3 instruct lists three)
        self.eos_token_id = self.config.eos_token_id
        hybrid = bool(self.config.mamba) if hasattr(self.config, "mamba") else False

        per_block = self.model.kv_cache_bytes_per_block(block_size, torch_dtype)
        if num_kv_blocks is None:
            num_kv_blocks = kv_cache_memory // per_block if per_block else 1
        if num_kv_blocks < 1:
            raise ValueError(
                f"kv_cache_memory={kv_cache_memory} bytes holds no block of {per_block}"
            )
        max_len = max_model_len or self.config.max_position_embeddings
        sched_cfg = SchedulerConfig(
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            max_model_len=max_len,
            enable_chunked_prefill=enable_chunked_prefill,
            preemption_mode=preemption_mode,
            vocab_size=self.config.vocab_size,
        )
        kv_bytes_per_token = per_block // block_size
        if prefix_cache == "auto":
            prefix_cache = "radix" if hybrid else "block"
        if prefix_cache == "block":
            if hybrid:
                raise ValueError("hybrid (SSM) models need prefix_cache='radix'")
            backend: KVBackend = PagedKVBackend(
                num_kv_blocks,
                block_size,
                enable_prefix_caching=enable_prefix_caching,
                kv_bytes_per_token=kv_bytes_per_token,
                num_host_blocks=num_host_blocks,
            )
        elif prefix_cache == "radix":
            slots = num_state_slots if num_state_slots is not None else 2 * max_num_seqs + 32
            backend = RadixKVBackend(
                num_kv_blocks,
                block_size,
                hybrid=hybrid,
                num_state_slots=slots if hybrid else 0,
                kv_bytes_per_token=kv_bytes_per_token,
                ssm_state_bytes=self.model.state_bytes_per_slot(torch_dtype) if hybrid else 0,
                eviction=eviction,
                admission=admission,
                # radix keys are tokens only: KV of one adapter would serve another
                enable_prefix_caching=enable_prefix_caching and not enable_lora,
            )
        else:
            raise ValueError(
                f"prefix_cache must be 'auto', 'block' or 'radix', got {prefix_cache!r}"
            )
        kv_cache = self.model.allocate_kv_cache(num_kv_blocks, block_size, torch_dtype, device)
        host_kv = (
            self.model.allocate_kv_cache(num_host_blocks, block_size, torch_dtype, "cpu")
            if num_host_blocks
            else None
        )
        state_pool = (
            self.model.allocate_state_pool(backend.states.num_slots, torch_dtype, device)
            if hybrid and isinstance(backend, RadixKVBackend)  # hybrid models are radix-only
            else None
        )
        self.lora = (
            LoRARuntime(
                self.model,
                max_loras=max_loras,
                max_lora_rank=max_lora_rank,
                max_cpu_loras=max_cpu_loras,
            )
            if enable_lora
            else None
        )
        runner_cls: type[ModelRunner] = ModelRunner
        extra: dict[str, Any] = {"lora": self.lora}
        if comm is not None:
            from core.dist.runner import ParallelModelRunner

            runner_cls, extra["comm"] = ParallelModelRunner, comm
        if spec_cfg is not None:
            runner_cls, extra = self._speculation(
                spec_cfg,
                backend,
                seed,
                torch_dtype,
                device,
                max_num_seqs,
                max_len,
                (attention_backend, linear_backend),
            )
        runner = runner_cls(
            self.model,
            kv_cache,
            backend,
            Sampler(seed=seed),
            state_pool=state_pool,
            host_kv=host_kv,
            **extra,
        )
        scheduler = (
            make_lora_scheduler(lora_scheduler)(
                sched_cfg, backend, queue, icp_policy, max_loras=max_loras
            )
            if enable_lora
            else Scheduler(sched_cfg, backend, queue, icp_policy)
        )
        self.engine = Engine(scheduler, runner)
        self._counter = 0

    def _speculation(
        self,
        cfg: SpeculativeConfig,
        backend: KVBackend,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
        max_num_seqs: int,
        max_len: int,
        backends: tuple[str | None, str | None],
    ) -> tuple[type[ModelRunner], dict[str, Any]]:
        """The speculating runner class and its extra arguments (its drafter built)."""
        from core.spec.build import make_drafter
        from core.spec.runner import SpecModelRunner

        drafter = make_drafter(
            cfg,
            target_vocab_size=self.config.vocab_size,
            dtype=dtype,
            device=device,
            seed=seed,
            kv_tokens=backend.capacity_tokens,
            block_size=backend.block_size,
            max_num_seqs=max_num_seqs,
            eos_token_id=self.eos_token_id,
            max_model_len=max_len,
            attention_backend=backends[0],
            linear_backend=backends[1],
        )
        k = cfg.num_speculative_tokens
        return SpecModelRunner, dict(
            drafter=drafter, num_speculative_tokens=k, max_num_seqs=max_num_seqs
        )

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "string prompts need a tokenizer.json in the model directory; "
                    "pass token ids instead"
                )
            return list(self.tokenizer.encode(prompt).ids)
        return [int(t) for t in prompt]

    def _lora_requests(
        self, lora: LoRARequest | Sequence[LoRARequest | None] | None, n: int
    ) -> list[LoRARequest | None]:
        llist = list(lora) if isinstance(lora, Sequence) else [lora] * n
        if len(llist) != n:
            raise ValueError(f"{len(llist)} LoRA requests for {n} prompts")
        if any(lr is not None for lr in llist) and self.lora is None:
            raise ValueError(
                "lora_request given but LoRA is not enabled: LLM(..., enable_lora=True)"
            )
        for lr in llist:
            if lr is not None and self.lora is not None:
                self.lora.adapter(lr)  # read (and check) it now, before anything runs
        return llist

    def _decode_logprobs(self, entries: PromptLogprobs | None) -> None:
        """Fill in each :class:`Logprob`'s ``decoded_token`` (the model has a tokenizer)."""
        assert self.tokenizer is not None
        texts: dict[int, str] = {}
        for entry in entries or ():
            for tid, lp in (entry or {}).items():
                if tid not in texts:
                    texts[tid] = self.tokenizer.decode([tid])
                lp.decoded_token = texts[tid]

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs in prompt order. Invalid sampling parameters raise
        ValueError before anything runs; a bad prompt (empty, too long) gets an output with
        ``finish_reason == "error"`` while the others complete. ``lora_request``: one adapter
        for every prompt, or a list with one (or None) per prompt; adapters are read when
        first used (a malformed folder raises :class:`~core.lora.adapter.AdapterFormatError`
        before anything runs)."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        plist = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        llist = self._lora_requests(lora_request, len(prompts))
        ids = []
        for prompt, sp, lora in zip(prompts, plist, llist, strict=True):
            if not isinstance(sp, SamplingParams):
                raise ValueError(f"sampling params must be SamplingParams, got {type(sp).__name__}")
            rid = f"req-{self._counter}"
            self._counter += 1
            self.engine.add_request(
                rid, self._encode(prompt), sp, eos_token_id=self.eos_token_id, lora_request=lora
            )
            ids.append(rid)
        bar = tqdm(total=len(ids), desc="generate", unit="req", disable=not use_tqdm)
        bar.update(sum(self.engine.request(r).is_finished for r in ids))
        while self.engine.has_unfinished_requests():
            bar.update(len(self.engine.step()))
        bar.close()
        outputs = []
        for rid in ids:
            out = RequestOutput.from_request(self.engine.request(rid))
            if self.tokenizer is not None:
                out.text = self.tokenizer.decode(out.token_ids)
                self._decode_logprobs(out.prompt_logprobs)
            outputs.append(out)
            self.engine.drop(rid)
        return outputs

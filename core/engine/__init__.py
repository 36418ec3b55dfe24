"""The inference engine: model runner, step loop, offline API and sampling.

``from core.engine import LLM, SamplingParams``::

    llm = LLM("path/to/hf-checkpoint")            # or a config dict: random weights
    outs = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=16))
    outs[0].token_ids

``Engine`` (add_request / step / abort / pause / resume) is the streaming interface the
simulator also drives, with a cost-model runner in place of :class:`ModelRunner`.
:class:`CpuClock` times it on its thread's CPU seconds instead of the wall clock.
"""

from core.lora.request import LoRARequest
from core.sched.runner import Runner, StepResult

from .clock import CpuClock
from .engine import Engine, RequestOutput, StepStats
from .llm import LLM
from .runner import ModelRunner
from .sampling import Logprob, Sampler, SamplingParams
from .serve import greedy_for, replay, serve_sessions

__all__ = [
    "LLM",
    "LoRARequest",
    "Logprob",
    "CpuClock",
    "Engine",
    "ModelRunner",
    "RequestOutput",
    "Runner",
    "Sampler",
    "SamplingParams",
    "StepResult",
    "StepStats",
    "greedy_for",
    "replay",
    "serve_sessions",
]

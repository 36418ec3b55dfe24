"""The paper's scale in the simulator: a run's work (its :class:`~.reason.Event` list, measured
on the zoo models: which steps were accepted, how many tokens each model wrote and prefilled,
how many drafts token-level speculation accepted) priced by roofline cost models of QwQ-32B
and DeepSeek-R1-Distill-Qwen-1.5B on A100 and H100 presets.

The paper serves each model in its own vLLM server; here each sits on its own device (one
GPU each, bf16), so a run's latency is the sum of its events' times (one request at a time, as
the paper's per-problem latency).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from core.model.spec import ModelSpec
from core.sim.cost import CostModel, RooflineCostModel

from .reason import Event

# Qwen/QwQ-32B config.json (a Qwen2.5-32B): 32.8B parameters, q/k/v biases.
QWQ_32B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064,
    "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
    "num_attention_heads": 40, "num_key_value_heads": 8, "hidden_act": "silu",
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "use_sliding_window": False, "tie_word_embeddings": False,
}  # fmt: skip
# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B config.json (a Qwen2.5-Math-1.5B): 1.8B parameters.
R1_1_5B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "use_sliding_window": False, "tie_word_embeddings": False,
}  # fmt: skip
HARDWARE = ("a100-80g", "h100-sxm")


@cache
def cost_models(hardware: str) -> dict[str, CostModel]:
    """``{"large": QwQ-32B, "small": R1-1.5B}`` cost models on one ``hardware`` device each."""
    return {
        "large": RooflineCostModel(ModelSpec.from_hf_config(QWQ_32B, name="QwQ-32B"), hardware),
        "small": RooflineCostModel(ModelSpec.from_hf_config(R1_1_5B, name="R1-1.5B"), hardware),
    }


def event_seconds(event: Event, costs: dict[str, CostModel]) -> float:
    """Seconds of one event: a prefill chunk, a run of one-token decode steps, or verify steps
    of token-level speculation (each: ``drafts`` one-token steps of the other model, then one
    target step over ``drafts + 1`` tokens)."""
    cost = costs[event.model]
    if event.tokens <= 0:
        return 0.0
    if event.kind == "prefill":
        return cost.step_time([(event.tokens, event.context)])
    if event.kind == "decode":
        return float(cost.decode_run_times([event.context], event.tokens).sum())
    if event.kind == "verify":
        drafter = costs["small" if event.model == "large" else "large"]
        draft = float(drafter.decode_run_times([event.context], event.drafts).sum())
        verify = cost.step_time([(event.drafts + 1, event.context)])
        return event.tokens * (draft + verify)
    raise ValueError(f"unknown event kind {event.kind!r}")


def priced_seconds(events: Sequence[Event], hardware: str) -> float:
    """A run's latency at paper scale on ``hardware``: the sum of its events' times."""
    costs = cost_models(hardware)
    return sum(event_seconds(e, costs) for e in events)

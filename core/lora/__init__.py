"""LoRA serving: adapters in the PEFT format on the engine's models, unmerged (many adapters in
one batch) or merged (one adapter folded into the weights), and the schedulers and cost model
that let the engine and the simulator serve them alike. docs/core/lora.md is the guide.

Torch-free here: :class:`LoRARequest`, the schedulers (:mod:`core.lora.scheduler`) and the cost
model (:mod:`core.lora.cost`). The engine side: :mod:`core.lora.adapter` (reading adapters) and
:mod:`core.lora.runtime` (slots, host cache, merged/unmerged forward).
"""

from .cost import LinearStepCost, LoRACostModel, LoRAProfile
from .request import LoRARequest
from .scheduler import (
    LoRAPlan,
    LoRAScheduler,
    LoRAStep,
    MergedOnlyScheduler,
    SingleAdapterScheduler,
    adapter_of,
)

__all__ = [
    "LinearStepCost",
    "LoRACostModel",
    "LoRAProfile",
    "LoRAPlan",
    "LoRARequest",
    "LoRAScheduler",
    "LoRAStep",
    "MergedOnlyScheduler",
    "SingleAdapterScheduler",
    "adapter_of",
]

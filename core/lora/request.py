"""``LoRARequest``: which adapter a request runs with (vLLM's shape), torch-free."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoRARequest"]


@dataclass(frozen=True)
class LoRARequest:
    """An adapter for one request: ``lora_name`` (unique per adapter), ``lora_int_id`` (a
    positive integer unique per adapter, as in vLLM) and ``lora_path``, a folder in the PEFT
    format (``adapter_config.json`` + ``adapter_model.safetensors``). The simulator needs no
    folder: ``lora_path`` may be empty there, and ``rank`` then says the adapter's rank
    (the engine reads it from the folder)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    rank: int | None = None

    def __post_init__(self) -> None:
        if not self.lora_name:
            raise ValueError("LoRARequest needs a non-empty lora_name")
        if self.lora_int_id < 1:
            raise ValueError(
                f"LoRARequest {self.lora_name!r}: lora_int_id must be >= 1, got {self.lora_int_id}"
            )

    @property
    def name(self) -> str:
        return self.lora_name

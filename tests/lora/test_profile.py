"""Measuring LoRA costs on this CPU gives a usable profile (no timing assertions: only shape
and sign; the numbers go to the artifact's report)."""

from core.lora.cost import LinearStepCost, LoRAProfile
from core.lora.profile import measure_lora

TINY = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def test_measure_lora_fits_a_profile():
    r = measure_lora(
        TINY,
        rank=4,
        batch_sizes=(1, 4),
        adapter_counts=(1, 4),
        prefill_tokens=16,
        context=8,
        rounds=1,
        repeats=1,
        switches=2,
        linear_backend="torch",
    )
    assert isinstance(r["lora"], LoRAProfile) and isinstance(r["base"], LinearStepCost)
    assert r["lora"].merge_s > 0 and r["lora"].unmerge_s > 0
    modes = {(s["kind"], s["batch"], s["mode"], s["adapters"]) for s in r["samples"]}
    assert ("decode", 4, "unmerged", 4) in modes and ("prefill", 1, "merged", 1) in modes
    assert set(r["rho"]) == {1, 4} and all(v > 0 for v in r["rho"].values())

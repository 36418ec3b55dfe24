"""PEFT adapters load into our model modules and give peft's logits; malformed folders fail
with one clear error naming the file."""

import json
import shutil

import pytest
import torch

from core.lora.adapter import AdapterFormatError, load_adapter, save_adapter
from core.lora.request import LoRARequest
from core.lora.runtime import LoRAPoolError, LoRARuntime
from core.model import ForwardBatch, load_model


def forward_logits(model, runtime, prompt, lora, merged=None):
    """All-position logits of ``prompt`` through our model with ``lora`` applied."""
    kv = model.allocate_kv_cache(4, 16)
    batch = ForwardBatch.build([prompt], [0], [[0, 1, 2, 3]], 16)
    if runtime is not None:
        runtime.prepare([lora], [len(prompt)], merged=merged)
    with torch.inference_mode():
        return model.compute_logits(model(batch, kv))


@pytest.fixture
def ours(lora_setup):
    base_dir, _ = lora_setup
    model, _ = load_model(base_dir, dtype=torch.float32, device="cpu")
    model.set_linear_backend("torch")
    return model, LoRARuntime(model, max_loras=2, max_lora_rank=8)


PROMPT = [5, 17, 99, 3, 250, 41, 7, 300, 12]


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_logits_equal_peft(lora_setup, ours, name):
    path, peft_model = lora_setup[1][name]
    model, rt = ours
    lora = LoRARequest(name, 1, str(path))
    got = forward_logits(model, rt, PROMPT, lora)
    with torch.no_grad():
        want = peft_model(torch.tensor([PROMPT])).logits[0].float()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert (want - base).abs().max() > 0.05  # the adapter matters: the check can fail


def test_merged_logits_equal_unmerged_and_unmerge_is_exact(lora_setup, ours):
    model, rt = ours
    path, _ = lora_setup[1]["a"]
    lora = LoRARequest("a", 1, str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = forward_logits(model, rt, PROMPT, lora)
    merged = forward_logits(model, rt, PROMPT, lora, merged="a")
    assert rt.merged == "a" and rt.stats.merges == 1
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the weights really hold the adapter now
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    base = forward_logits(model, rt, PROMPT, None)  # back to unmerged: unmerges
    assert rt.merged is None and rt.stats.unmerges == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.allclose(base, unmerged, atol=1e-2)


def test_arithmetic_unmerge_within_rounding(lora_setup, ours):
    model, _ = ours
    rt = LoRARuntime(model, max_loras=1, max_lora_rank=8, exact_unmerge=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rt.merge(LoRARequest("b", 2, str(lora_setup[1]["b"][0])))
    rt.unmerge()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_pool_loads_evicts_lru_and_refuses_too_many(lora_setup, ours):
    model, rt = ours
    reqs = {n: LoRARequest(n, i + 1, str(p)) for i, (n, (p, _)) in enumerate(lora_setup[1].items())}
    rt.prepare([reqs["a"], reqs["b"]], [1, 1])
    assert rt.slot_of("a") is not None and rt.slot_of("b") is not None
    rt.prepare([reqs["a"]], [1])  # touch a: b is now least recently used
    rt.prepare([reqs["c"]], [1])
    assert rt.slot_of("b") is None and rt.slot_of("a") is not None
    assert rt.stats.slot_evictions == 1 and rt.stats.disk_loads == 3
    with pytest.raises(LoRAPoolError, match="max_loras=2"):
        rt.prepare([reqs["a"], reqs["b"], reqs["c"]], [1, 1, 1])


def test_host_cache_budget(lora_setup, ours):
    model, _ = ours
    rt = LoRARuntime(model, max_loras=1, max_lora_rank=8, max_cpu_loras=1)
    for i, name in enumerate("ab"):
        rt.adapter(LoRARequest(name, i + 1, str(lora_setup[1][name][0])))
    assert rt.stats.host_evictions == 1 and rt.stats.disk_loads == 2


def test_rank_above_max_is_refused(lora_setup, ours):
    model, _ = ours
    rt = LoRARuntime(model, max_loras=1, max_lora_rank=4)
    with pytest.raises(LoRAPoolError, match="rank 8 > max_lora_rank=4"):
        rt.adapter(LoRARequest("b", 1, str(lora_setup[1]["b"][0])))


def _copy(lora_setup, tmp_path, name="a"):
    dst = tmp_path / "adapter"
    shutil.copytree(lora_setup[1][name][0], dst)
    return dst


def test_malformed_folders_name_the_file(lora_setup, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(AdapterFormatError, match="not a directory"):
        load_adapter(tmp_path / "nope")
    d = _copy(lora_setup, tmp_path)
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())

    cfg_path.write_text("{not json")
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json: not valid JSON"):
        load_adapter(d)
    cfg_path.write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json: use_dora=True"):
        load_adapter(d)
    cfg_path.write_text(json.dumps({**cfg, "r": 0}))
    with pytest.raises(AdapterFormatError, match="'r' must be a positive integer"):
        load_adapter(d)
    cfg_path.write_text(json.dumps(cfg))

    wpath = d / "adapter_model.safetensors"
    tensors = load_file(wpath)
    key = next(k for k in tensors if "lora_B" in k)
    save_file({k: v for k, v in tensors.items() if k != key}, wpath)
    with pytest.raises(AdapterFormatError, match=r"adapter_model\.safetensors: .* no lora_B"):
        load_adapter(d)
    wpath.write_bytes(b"garbage")
    with pytest.raises(AdapterFormatError, match="unreadable safetensors"):
        load_adapter(d)
    wpath.unlink()
    with pytest.raises(AdapterFormatError, match=r"adapter_model\.safetensors: missing"):
        load_adapter(d)
    cfg_path.unlink()
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json: missing"):
        load_adapter(d)


def test_adapter_for_another_model_is_refused(lora_setup, ours, tmp_path):
    from safetensors.torch import load_file, save_file

    model, rt = ours
    d = _copy(lora_setup, tmp_path)
    wpath = d / "adapter_model.safetensors"
    tensors = load_file(wpath)
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = torch.zeros(4, 32)  # in_features 32, the model's is 64
    save_file(tensors, wpath)
    with pytest.raises(AdapterFormatError, match="do not fit the model's layer"):
        rt.adapter(LoRARequest("x", 9, str(d)))


def test_save_adapter_round_trips_and_peft_reads_it(lora_setup, ours, tmp_path):
    from peft import PeftModel

    from tests.model.conftest import build_hf

    _, peft_model = lora_setup[1]["a"]
    src = load_adapter(lora_setup[1]["a"][0])
    scale = 8 / 4  # lora_alpha / r of adapter "a"
    raw = {k: (a, b / scale) for k, (a, b) in src.weights.items()}
    out = save_adapter(tmp_path / "saved", raw, lora_alpha=8)
    again = load_adapter(out)
    assert again.weights.keys() == src.weights.keys()
    for k, (a, b) in src.weights.items():
        torch.testing.assert_close(again.weights[k][0], a)
        torch.testing.assert_close(again.weights[k][1], b)
    reread = PeftModel.from_pretrained(build_hf("llama"), out).eval()
    with torch.no_grad():
        x = torch.tensor([PROMPT])
        torch.testing.assert_close(reread(x).logits, peft_model(x).logits, atol=1e-5, rtol=1e-5)

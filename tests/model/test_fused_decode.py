"""The fused decode layer (core.kernels.fused_layer) against the layer's own Python forward: the
same logits bit for bit on decode steps, taken exactly when its contract allows, and the Python
path whenever it does not."""

from __future__ import annotations

import pytest
import torch

from core.kernels import cpu_ext
from core.model import load_model

from .conftest import hf_config
from .paged import PagedRunner

pytestmark = pytest.mark.skipif(cpu_ext.load() is None, reason="the C++ extension is not built")


class Counting:
    """The extension with counters: layers run fused (one by one or in a stack) and stacks."""

    def __init__(self, ext):
        self.ext, self.calls, self.stacks = ext, 0, 0

    def __getattr__(self, name):
        return getattr(self.ext, name)

    def llama_decode_layer(self, *args):
        self.calls += 1
        return self.ext.llama_decode_layer(*args)

    def llama_decode_stack(self, h, weights, k_caches, *args):
        self.calls += len(k_caches)
        self.stacks += 1
        return self.ext.llama_decode_stack(h, weights, k_caches, *args)


@pytest.fixture
def counting(monkeypatch):
    counter = Counting(cpu_ext.load())
    monkeypatch.setattr(cpu_ext, "load", lambda: counter)
    return counter


def _model(arch: str, dtype: torch.dtype):
    model, _ = load_model(hf_config(arch), seed=5)
    model = model.to(dtype)
    model.set_linear_backend("cpp")
    model.set_attention_backend("cpp")
    return model


def _run(model, fused: bool, steps: list[dict[int, list[int]]]) -> list[torch.Tensor]:
    model.fused_decode = fused
    runner = PagedRunner(model, num_blocks=64, block_size=4, seed=1)
    return [torch.cat(list(runner.step(work).values())) for work in steps]


def _steps(vocab: int, prompts: tuple[int, ...], decodes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    steps = [
        {i: torch.randint(3, vocab, (n,), generator=g).tolist() for i, n in enumerate(prompts)}
    ]
    for _ in range(decodes):
        steps.append(
            {i: [int(torch.randint(3, vocab, (1,), generator=g))] for i in range(len(prompts))}
        )
    return steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_decode_steps_equal_the_python_layers_bit_for_bit(arch, dtype, counting):
    model = _model(arch, dtype)
    steps = _steps(model.config.vocab_size, (13, 6, 21), decodes=5)
    reference = _run(model, False, steps)
    assert counting.calls == 0
    fused = _run(model, True, steps)
    layers = len(model.layers)
    assert counting.calls == 5 * layers  # every decode step, every layer; never the prompts
    assert counting.stacks == 5  # all layers of a step in one call
    for ref, got in zip(reference, fused, strict=True):
        assert torch.equal(ref, got)


def test_mixed_steps_and_per_head_norms_take_the_python_path(counting):
    model = _model("llama", torch.float32)
    vocab = model.config.vocab_size
    steps = _steps(vocab, (9,), decodes=1)
    steps.append({0: [5], 1: [7, 8, 9]})  # a decode beside a new prompt: a mixed step
    reference = _run(model, False, steps)
    fused = _run(model, True, steps)
    assert counting.calls == len(model.layers)  # the one pure decode step only
    assert all(torch.equal(a, b) for a, b in zip(reference, fused, strict=True))

    qwen3 = _model("qwen3", torch.float32)  # q/k norms before RoPE: not in the fused layer
    _run(qwen3, True, _steps(qwen3.config.vocab_size, (9,), decodes=2))
    assert counting.calls == len(model.layers)


def test_a_hook_or_a_stale_pack_falls_back_to_the_python_layer(counting):
    model = _model("llama", torch.float32)
    steps = _steps(model.config.vocab_size, (9, 4), decodes=2)
    reference = _run(model, True, steps)
    calls = counting.calls
    # a forward hook (as a LoRA adapter adds) must run: that layer takes the Python path
    seen = []
    handle = model.layers[1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(1))
    hooked = _run(model, True, steps)
    handle.remove()
    assert len(seen) == 3 and counting.calls - calls == 2 * (len(model.layers) - 1)
    assert counting.stacks == 2  # the first run's decode steps; the hooked run goes layer by layer
    assert all(torch.equal(a, b) for a, b in zip(reference, hooked, strict=True))
    # an in-place weight edit makes the pack stale: the Python path runs on the new weight
    with torch.no_grad():
        model.layers[0].self_attn.o_proj.weight.mul_(0.5)
    calls = counting.calls
    edited = _run(model, True, steps)
    assert counting.calls - calls == 2 * (len(model.layers) - 1)
    model.fused_decode = False
    assert not torch.equal(reference[-1], edited[-1])
    assert all(torch.equal(a, b) for a, b in zip(_run(model, False, steps), edited, strict=True))


def test_the_stack_rebinds_after_repacking_and_checks_its_inputs(counting):
    model = _model("llama", torch.float32)
    steps = _steps(model.config.vocab_size, (5,), decodes=2)
    runner = PagedRunner(model, num_blocks=64, block_size=4, seed=1)
    first = [runner.step(work) for work in steps]
    assert counting.stacks == 2
    bound = model._stack_binding
    model.set_linear_backend("cpp")  # new packs: the old binding must not be used
    assert model._stack_binding is None
    runner = PagedRunner(model, num_blocks=64, block_size=4, seed=1)
    again = [runner.step(work) for work in steps]
    assert counting.stacks == 4 and model._stack_binding is not bound
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(a[i], b[i]) for i in a)

    # one linear moved off its C++ pack mid-run (same KV cache, so the stack stays bound to
    # the old pack): the stack must stand aside and that layer take its Python forward
    def switch_after_first_decode(fused: bool) -> list[dict[int, torch.Tensor]]:
        model.set_linear_backend("cpp")
        model.fused_decode = fused
        runner = PagedRunner(model, num_blocks=64, block_size=4, seed=1)
        out = [runner.step(steps[0]), runner.step(steps[1])]
        stacks, calls = counting.stacks, counting.calls
        model.layers[0].self_attn.o_proj.set_backend("torch")
        out.append(runner.step(steps[2]))
        if fused:
            assert counting.stacks == stacks
            assert counting.calls - calls == len(model.layers) - 1  # the other layers fuse
        return out

    for a, b in zip(switch_after_first_decode(True), switch_after_first_decode(False), strict=True):
        assert all(torch.equal(a[i], b[i]) for i in a)
    h = torch.zeros(1, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="per layer expected"):
        counting.ext.llama_decode_stack(
            h, [None] * 7, [h], [h], [1e-6, 1.0], [0], [1] * 5, h, h, h, h, h, h
        )

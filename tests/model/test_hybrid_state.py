"""The hybrid's SSM state slots: checkpoints, copy-on-write, fresh states."""

from __future__ import annotations

import pytest
import torch

from core.model import ForwardBatch, load_model

from .conftest import VOCAB, build_hf, hf_logits
from .paged import PagedRunner

TOL = 3e-5


@pytest.fixture(scope="module")
def bamba(tmp_path_factory):
    hf = build_hf("bamba")
    path = tmp_path_factory.mktemp("bamba")
    hf.save_pretrained(path)
    model, _ = load_model(path)
    return hf, model


def tokens(n, seed):
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("cut", [1, 4, 6, 11])
def test_resume_from_copied_checkpoint_equals_uninterrupted(bamba, cut):
    """Prefill stops at `cut` (a prefix-cache checkpoint); the state slot is copied to a new
    slot and the prompt continues from the copy: same logits as one uninterrupted run."""
    hf, model = bamba
    prompt, tail = tokens(13, 1), tokens(3, 2)
    runner = PagedRunner(model)
    runner.step({"ckpt": prompt[:cut]})
    ckpt_slot = runner.seqs["ckpt"].slot
    saved = [t[ckpt_slot].clone() for t in (*runner.pool.conv, *runner.pool.ssm)]

    runner.fork("ckpt", "resumed")
    assert runner.seqs["resumed"].slot != ckpt_slot
    resumed = [runner.step({"resumed": prompt[cut:], "whole": prompt})]
    for tok in tail:
        resumed.append(runner.step({"resumed": [tok], "whole": [tok]}))
    for out in resumed:
        assert (out["resumed"][-1] - out["whole"][-1]).abs().max() < TOL
    assert (resumed[0]["resumed"] - hf_logits(hf, prompt)[cut:]).abs().max() < TOL

    # copy-on-write: continuing from the copy left the checkpoint slot untouched
    after = [t[ckpt_slot] for t in (*runner.pool.conv, *runner.pool.ssm)]
    assert all(torch.equal(a, b) for a, b in zip(saved, after, strict=True))


def test_fresh_sequence_ignores_stale_slot(bamba):
    """has_initial_state=False starts from zeros whatever the slot holds (even NaN)."""
    hf, model = bamba
    prompt = tokens(7, 3)
    runner = PagedRunner(model)
    for t in (*runner.pool.conv, *runner.pool.ssm):
        t.fill_(float("nan"))
    got = runner.step({"a": prompt, "one": prompt[:1]})
    assert (got["a"] - hf_logits(hf, prompt)).abs().max() < TOL
    assert (got["one"] - hf_logits(hf, prompt[:1])).abs().max() < TOL


def test_one_token_prompt_next_to_decodes(bamba):
    """A new one-token prompt takes the batched step path alongside real decode rows."""
    hf, model = bamba
    a = tokens(6, 4)
    runner = PagedRunner(model)
    runner.step({"a": a[:5]})
    got = runner.step({"a": a[5:], "b": [42]})
    assert (got["a"] - hf_logits(hf, a)[-1:]).abs().max() < TOL
    assert (got["b"] - hf_logits(hf, [42])).abs().max() < TOL


def test_forward_requires_state_pool(bamba):
    _, model = bamba
    batch = ForwardBatch.build([[5, 6]], [0], [[0]], 4, state_indices=[0])
    with pytest.raises(ValueError, match="pass state_pool"):
        model(batch, model.allocate_kv_cache(2, 4))

"""The training forward (``core.model.training``) runs the engine's own modules on dense
``[B, L]`` batches: its logits equal the paged inference path's, right padding does not leak
into real positions, and gradients reach every parameter."""

from __future__ import annotations

import pytest
import torch

from core.model import load_model
from core.model.training import dense_forward, dense_logits, train_mode

from .conftest import ARCHS, hf_config
from .paged import PagedRunner

CASES = ARCHS  # every family, Mistral with a window shorter than the sequences


def _model(name: str):
    model, _ = load_model(hf_config(name), seed=3)
    return model


@pytest.mark.parametrize("name", CASES)
def test_dense_logits_equal_the_paged_path(name):
    model = _model(name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 11), generator=g)
    with torch.no_grad():
        dense = dense_logits(model, dense_forward(model, ids)).float()
    runner = PagedRunner(model)
    paged = runner.step({b: ids[b].tolist() for b in range(3)})
    for b in range(3):
        torch.testing.assert_close(dense[b], paged[b], atol=3e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_right_padding_does_not_change_real_positions(name):
    model = _model(name)
    ids = torch.randint(
        3, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1)
    )
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = dense_forward(model, ids)
        b = dense_forward(model, padded)[:, :9]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_every_parameter(name):
    model = train_mode(_model(name))
    ids = torch.randint(
        3, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(2)
    )
    logits = dense_logits(model, dense_forward(model, ids))
    torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    ).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_packed_linear_backend_is_refused():
    model = _model("llama")
    model.linear_backend = "onednn"  # what set_linear_backend("onednn") leaves
    with pytest.raises(ValueError, match="torch linear backend"):
        dense_forward(model, torch.zeros(1, 4, dtype=torch.long))

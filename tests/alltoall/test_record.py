"""The routing recorder counts what the MoE layer itself chooses, per source."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.alltoall.record import RoutingRecorder
from core.model.config import MoEConfig
from core.model.mixtral import SparseMoE


def test_recorded_counts_equal_the_layers_own_choice_per_source():
    torch.manual_seed(0)
    model = nn.Sequential(SparseMoE(16, MoEConfig(6, 2, 8)), SparseMoE(16, MoEConfig(6, 2, 8)))
    xs = [torch.randn(10, 16), torch.randn(7, 16)]
    with RoutingRecorder(model, sources=2) as rec:
        for s, x in enumerate(xs):
            rec.source = s
            model(x)
    assert rec.counts.shape == (2, 2, 6)
    for s, x in enumerate(xs):
        h = x
        for layer, moe in enumerate(model):
            probs = torch.softmax(moe.gate(h).float(), dim=-1)
            chosen = torch.topk(probs, 2, dim=-1).indices.reshape(-1)
            want = torch.bincount(chosen, minlength=6).numpy()
            assert rec.counts[layer, s].tolist() == want.tolist()
            h = moe(h)
        assert rec.counts[:, s].sum(axis=1).tolist() == [2 * len(x)] * 2
    # detached: nothing more is counted
    model(xs[0])
    assert rec.counts.sum() == 2 * 2 * 17


def test_a_model_without_moe_layers_is_refused():
    with pytest.raises(ValueError, match="no SparseMoE"):
        RoutingRecorder(nn.Linear(2, 2), sources=1)

"""The two batched LoRA kernel shapes against the one-row-at-a-time definition."""

import pytest
import torch

from core.kernels.lora import (
    bgmv_expand,
    bgmv_shrink,
    lora_delta_reference,
    segments_of,
    sgmv_expand,
    sgmv_shrink,
)


@pytest.mark.parametrize("slots", [[0, 0, 1, 1, 2], [2, -1, 0, 2, 1, -1, 0], [-1, -1], [1]])
def test_segmented_and_gathered_match_definition(slots):
    g = torch.Generator().manual_seed(0)
    S, R, d_in, d_out = 3, 4, 16, 12
    a = torch.randn(S, R, d_in, generator=g)
    b = torch.randn(S, d_out, R, generator=g)
    x = torch.randn(len(slots), d_in, generator=g)
    want = lora_delta_reference(x, a, b, slots)
    segs = segments_of(slots)
    seg = sgmv_expand(sgmv_shrink(x, a, segs), b, segs, torch.zeros(len(slots), d_out))
    idx = torch.tensor(slots)
    gat = bgmv_expand(bgmv_shrink(x, a, idx), b, idx, torch.zeros(len(slots), d_out))
    torch.testing.assert_close(seg, want)
    torch.testing.assert_close(gat, want)
    for t, s in enumerate(slots):  # rows without an adapter get exactly zero
        if s < 0:
            assert not seg[t].any() and not gat[t].any()


def test_segments_are_contiguous_slices_when_they_can_be():
    segs = segments_of([1, 1, 0, -1, 1])
    assert segs[0].slot == 1 and torch.equal(segs[0].rows, torch.tensor([0, 1, 4]))
    assert segs[1].slot == 0 and segs[1].rows == slice(2, 3)

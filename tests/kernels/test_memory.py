"""Huge-page buffers: same contract as torch.empty/zeros, aligned and advised on Linux."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from core.kernels.memory import HUGE_PAGE_BYTES, huge_page_empty, huge_page_zeros

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_large_buffer_is_aligned_writable_and_sized(dtype: torch.dtype) -> None:
    shape = (3, HUGE_PAGE_BYTES // 4 + 7)
    t = huge_page_empty(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
    t.fill_(3)
    assert bool((t == 3).all())
    if sys.platform.startswith("linux"):
        assert t.data_ptr() % HUGE_PAGE_BYTES == 0


def test_zeros_are_zero() -> None:
    z = huge_page_zeros((HUGE_PAGE_BYTES,), torch.float16)
    assert z.shape == (HUGE_PAGE_BYTES,) and z.dtype == torch.float16 and not z.any()


@pytest.mark.skipif(not THP.exists(), reason="no transparent huge pages on this system")
def test_large_buffers_are_advised_for_huge_pages_small_ones_not() -> None:
    t = huge_page_zeros((HUGE_PAGE_BYTES,), torch.float32)  # 8 MiB
    assert "hg" in vm_flags(t.data_ptr())
    plain = torch.empty(HUGE_PAGE_BYTES, dtype=torch.float32)  # the control: never advised
    assert "hg" not in vm_flags(plain.data_ptr())
    small = huge_page_empty((4, 5), torch.float32)  # under 2 MiB: a plain allocation
    assert small.shape == (4, 5) and "hg" not in vm_flags(small.data_ptr())

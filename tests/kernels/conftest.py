"""Fixtures of the kernel tests. ``ext``: the compiled extension (built once per machine
and cached, see core.kernels.cpu_ext), or a skip where it cannot be built."""

from __future__ import annotations

import pytest

from core.kernels import cpu_ext


@pytest.fixture(scope="session")
def ext():
    module = cpu_ext.load()
    if module is None:
        pytest.skip("the servelab CPU extension cannot be built here")
    return module

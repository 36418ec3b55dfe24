"""A group of 2 gloo ranks on this machine, shared by the tests of one module."""

import pytest


@pytest.fixture(scope="module")
def two_ranks():
    """A :class:`core.dist.LocalGroup` of 2 gloo processes (one torch thread each); a failed
    test's group is replaced for the next test."""
    from core.dist import LocalGroup

    holder = {"group": LocalGroup(2, timeout_s=60)}

    class Runner:
        def run(self, fn, *args):
            if holder["group"]._closed:
                holder["group"] = LocalGroup(2, timeout_s=60)
            return holder["group"].run(fn, *args, timeout_s=300)

    yield Runner()
    holder["group"].close()

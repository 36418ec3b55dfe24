"""The baseline routers' interface: ``make_router`` by name, and ``on_finish`` with and without
the output length (routers that do not use it keep the old call)."""

import pytest

from core.cluster import ROUTERS, LeastOutstandingWork, PrefixAffinity, RoundRobin, make_router


def test_make_router_by_name_and_on_finish_stays_compatible():
    assert isinstance(make_router("round-robin"), RoundRobin)
    assert isinstance(make_router("least-work"), LeastOutstandingWork)
    assert isinstance(make_router("prefix-affinity"), PrefixAffinity)
    rr = RoundRobin()
    assert make_router(rr) is rr
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        make_router("nope")
    assert {"round-robin", "least-work", "prefix-affinity"} <= set(ROUTERS)
    RoundRobin().on_finish(0, "x", 0.0)  # the old call still works
    RoundRobin().on_finish(0, "x", 0.0, output_tokens=3)


def test_make_router_by_import_path():
    assert isinstance(make_router("core.cluster.router:PrefixAffinity"), PrefixAffinity)
    with pytest.raises(ValueError, match="cannot import module 'no.such.module'"):
        make_router("no.such.module:Router")
    with pytest.raises(ValueError, match="made a dict, not a Router"):
        make_router("builtins:dict")


def test_notify_finish_passes_output_tokens_only_to_routers_that_take_them():
    from core.cluster.router import notify_finish

    calls = []

    class Old(RoundRobin):
        def on_finish(self, replica, request_id, now):
            calls.append(("old", replica, request_id))

    class New(RoundRobin):
        def on_finish(self, replica, request_id, now, output_tokens=None):
            calls.append(("new", replica, request_id, output_tokens))

    notify_finish(Old(), 1, "a", 0.0, 7)
    notify_finish(New(), 2, "b", 0.0, 7)
    assert calls == [("old", 1, "a"), ("new", 2, "b", 7)]

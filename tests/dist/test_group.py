"""Process groups: collectives across 2 local gloo ranks, and failures that end in a clear
error instead of a hang."""

import os
import time

import pytest
import torch

from core.dist import CollectiveError, Comm, LocalGroup, RankFailedError, spawn


def _collectives(comm: Comm) -> dict:
    r = comm.rank
    out = {"rank": r, "world": comm.world_size}
    out["sum"] = comm.all_reduce(torch.tensor([1.0 + r, 10.0])).tolist()
    out["gather"] = comm.all_gather(torch.tensor([[r, r]])).tolist()
    out["uneven"] = comm.all_gather_uneven(torch.arange(r + 1)).tolist()
    # rank 0 sends 1 row to itself and 2 to rank 1; rank 1 sends 3 to rank 0 and none to itself
    send = [[1, 2], [3, 0]][r]
    counts = comm.exchange_counts(torch.tensor(send)).tolist()
    rows = torch.arange(sum(send)) + 100 * r
    out["a2a"] = comm.all_to_all(rows, send, counts).tolist()
    out["counts"] = counts
    out["bcast"] = comm.broadcast(torch.tensor([r + 5])).tolist()
    out["obj"] = comm.broadcast_object({"from": r})
    return out


def test_collectives_on_two_ranks(two_ranks):
    r0, r1 = two_ranks.run(_collectives)
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["sum"] == r1["sum"] == [3.0, 20.0]
    assert r0["gather"] == [[0, 0], [1, 1]]
    assert r0["uneven"] == r1["uneven"] == [0, 0, 1]
    assert r0["counts"] == [1, 3] and r1["counts"] == [2, 0]
    assert r0["a2a"] == [0, 100, 101, 102] and r1["a2a"] == [1, 2]
    assert r0["bcast"] == r1["bcast"] == [5]
    assert r1["obj"] == {"from": 0}


def test_world_of_one_is_the_identity():
    comm = Comm()
    t = torch.ones(3)
    assert comm.all_reduce(t) is t and comm.all_gather(t) is t
    assert comm.all_to_all(t, [3], [3]) is t and comm.broadcast_object(7) == 7


def _die_or_reduce(comm: Comm) -> None:
    if comm.rank == 1:
        os._exit(3)
    time.sleep(0.5)  # let rank 1 go first
    comm.all_reduce(torch.ones(4))


def _hang_or_reduce(comm: Comm) -> str:
    if comm.rank == 1:  # alive but late: misses rank 0's collective by far more than 2 s
        time.sleep(12)
        return "late"
    try:
        comm.all_reduce(torch.ones(4))
    except CollectiveError as e:
        return str(e)
    return "no error"


@pytest.mark.slow  # starts its own 2 processes
def test_a_dead_rank_fails_the_run_with_its_exit_code():
    with LocalGroup(2, timeout_s=20) as group:
        with pytest.raises(RankFailedError, match=r"rank (1 exited with code 3|0 failed)"):
            group.run(_die_or_reduce, timeout_s=60)
        with pytest.raises(RankFailedError, match="closed"):
            group.run(_collectives)


@pytest.mark.slow  # starts its own 2 processes
def test_a_hung_peer_times_the_collective_out_with_a_clear_error():
    with LocalGroup(2, timeout_s=2) as group:
        error, late = group.run(_hang_or_reduce, timeout_s=120)
    assert late == "late"
    assert "rank 0 of 2 (gloo): all_reduce failed" in error
    assert "within 2 s" in error


def _raise_on_rank_1(comm: Comm) -> int:
    if comm.rank == 1:
        raise ValueError("bad shard")
    return 0


@pytest.mark.slow  # starts its own 2 processes
def test_an_exception_names_the_rank_and_carries_the_traceback():
    with pytest.raises(RankFailedError, match="(?s)rank 1 failed.*ValueError: bad shard"):
        spawn(_raise_on_rank_1, 2, timeout_s=10)

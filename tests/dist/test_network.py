"""The collective cost model against hand-computed cases, and its fits."""

import math

import pytest

from core.sim.network import (
    Link,
    Measurement,
    NetworkModel,
    algorithm_factors,
    fit_link,
    gloo_network,
    network_for,
    relative_errors,
    vidur_network,
)

# 100 GB/s nominal at 50%: 50 GB/s achieved; 2 us a step, 10 us a launch
LINK = Link("test", bandwidth=100e9, hop_latency_s=2e-6, launch_s=10e-6, efficiency=0.5)
NIC = Link("nic", bandwidth=10e9, hop_latency_s=5e-6, launch_s=20e-6, efficiency=1.0)
MB = 1e6


def test_one_node_collectives_by_hand():
    net = NetworkModel(LINK, devices_per_node=8)
    # ring all-reduce of 4 MB on 4 ranks: 6 steps, 2*3/4*4 MB = 6 MB at 50 GB/s = 120 us
    assert net.all_reduce(4 * MB, 4) == pytest.approx(10e-6 + 6 * 2e-6 + 120e-6)
    # all-gather of an 8 MB output on 8 ranks: 7 steps, 7 MB -> 140 us
    assert net.all_gather(8 * MB, 8) == pytest.approx(10e-6 + 7 * 2e-6 + 140e-6)
    assert net.reduce_scatter(8 * MB, 8) == pytest.approx(net.all_gather(8 * MB, 8))
    # all-to-all: each of 2 ranks sends half of its 2 MB away: 1 step, 1 MB -> 20 us
    assert net.all_to_all(2 * MB, 2) == pytest.approx(10e-6 + 2e-6 + 20e-6)
    assert net.send_recv(1 * MB) == pytest.approx(10e-6 + 2e-6 + 20e-6)
    assert net.broadcast(1 * MB, 4) == pytest.approx(10e-6 + 3 * 2e-6 + 20e-6)
    assert net.all_reduce(1 * MB, 1) == 0.0


def test_hierarchical_across_two_nodes_by_hand():
    net = NetworkModel(LINK, NIC, devices_per_node=4)
    n = 8 * MB
    # all-reduce on 8 ranks = 2 nodes of 4: RS in the node (3 steps, 3/4*8 MB = 6 MB at 50 GB/s
    # = 120 us), all-reduce of 2 MB over 2 nodes (2 steps, 2 MB at 10 GB/s = 200 us), AG (same
    # as RS); one launch, the larger one
    intra = 3 * 2e-6 + 120e-6
    inter = 2 * 5e-6 + 200e-6
    assert net.all_reduce(n, 8) == pytest.approx(20e-6 + inter + 2 * intra)
    # all-gather of 8 MB: the node's phase once, and 1/4 of the data across nodes (1 step,
    # 1/2 * 2 MB = 1 MB at 10 GB/s)
    assert net.all_gather(n, 8) == pytest.approx(20e-6 + (5e-6 + 100e-6) + intra)
    # all-to-all of 8 MB a rank: 4/8 leaves the node (4 steps at 10 GB/s: 400 us) while 3/8
    # stays (3 steps at 50 GB/s: 60 us)
    assert net.all_to_all(n, 8) == pytest.approx(20e-6 + 4 * 5e-6 + 400e-6)
    assert net.send_recv_across_nodes(MB) == pytest.approx(20e-6 + 5e-6 + 100e-6)


def test_bad_input_is_named():
    net = NetworkModel(LINK, devices_per_node=4)
    with pytest.raises(ValueError, match="no inter-node link"):
        net.all_reduce(MB, 8)
    with pytest.raises(ValueError, match="unknown collective 'gather'"):
        net.seconds("gather", MB, 2)
    with pytest.raises(ValueError, match="whole nodes"):
        NetworkModel(LINK, NIC, devices_per_node=4).all_reduce(MB, 6)
    with pytest.raises(ValueError, match="send_recv is between 2 ranks"):
        algorithm_factors("send_recv", 3)
    with pytest.raises(ValueError, match="efficiency must be positive"):
        Link("x", 1e9, 0.0, efficiency=0.0)
    with pytest.raises(ValueError, match="no network model for 'tpu'"):
        network_for("tpu")


def test_fit_recovers_the_link_that_made_the_times():
    points = [
        Measurement(c, p, n, NetworkModel(LINK).seconds(c, n, p))
        for c in ("all_reduce", "all_gather", "send_recv")
        for p in ((2,) if c == "send_recv" else (2, 4, 8))
        for n in (4e3, 1e5, 1e6, 3e7)
    ]
    fitted = fit_link(Link("test", bandwidth=100e9, hop_latency_s=0.0), points)
    assert fitted.efficiency == pytest.approx(0.5, rel=1e-6)
    assert fitted.hop_latency_s == pytest.approx(2e-6, rel=1e-6)
    assert fitted.launch_s == pytest.approx(10e-6, rel=1e-6)
    assert max(map(abs, relative_errors(NetworkModel(fitted), points))) < 1e-6


@pytest.mark.parametrize("gpu", ["a100-80g", "h100-sxm"])
def test_vidur_fit_is_plausible_and_close_at_large_sizes(gpu):
    net = vidur_network(gpu)
    # the fitted links achieve a physical share of the datasheet bandwidth
    assert 0.3 < net.intra.efficiency <= 1.0
    assert 0.1 < net.inter.efficiency <= 1.0
    assert net.intra.launch_s + net.intra.hop_latency_s < 50e-6
    # 64 MiB all-reduce on the 8 GPUs of one node: Vidur measured 0.681 ms (A100) and
    # 0.346 ms (H100); the model is within 25% of it
    measured = {"a100-80g": 0.681e-3, "h100-sxm": 0.346e-3}[gpu]
    model = net.all_reduce(64 * 2**20, 8)
    assert model / measured == pytest.approx(1.0, abs=0.25)
    assert network_for({"a100-80g": "a100-40g", "h100-sxm": "h200"}[gpu]) is net


def test_gloo_model_is_one_link_for_any_world():
    net = gloo_network()
    assert math.isfinite(net.all_reduce(MB, 64))
    assert net.all_reduce(MB, 2) > net.all_reduce(MB / 2, 2)


def test_per_collective_overrides_and_their_fit():
    link = Link(
        "t",
        bandwidth=100e9,
        hop_latency_s=2e-6,
        launch_s=10e-6,
        efficiency=0.5,
        collective_efficiency={"send_recv": 0.8},
        collective_launch_s={"all_reduce": 30e-6},
    )
    net = NetworkModel(link)
    # all-reduce: its own launch, the link's efficiency; send/recv: the link's launch, 80 GB/s
    assert net.all_reduce(4 * MB, 4) == pytest.approx(30e-6 + 6 * 2e-6 + 120e-6)
    assert net.send_recv(8 * MB) == pytest.approx(10e-6 + 2e-6 + 100e-6)
    points = [
        Measurement(c, p, n, net.seconds(c, n, p))
        for c, worlds in (("all_reduce", (2, 4, 8)), ("send_recv", (2,)))
        for p in worlds
        for n in (4e3, 1e5, 1e6, 3e7)
    ]
    fitted = fit_link(Link("t", 100e9, 0.0), points, per_collective=True)
    assert fitted.collective_efficiency == pytest.approx({"all_reduce": 0.5, "send_recv": 0.8})
    assert fitted.collective_launch_s == pytest.approx({"all_reduce": 30e-6, "send_recv": 10e-6})
    assert fitted.hop_latency_s == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="unknown collective 'gather'"):
        Link("x", 1e9, 0.0, collective_launch_s={"gather": 1e-6})

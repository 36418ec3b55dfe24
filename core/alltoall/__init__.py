"""All-to-all scheduling and expert placement for expert-parallel MoE layers (Aurora).

- :mod:`.traffic`: routing matrices (Zipf or recorded) -> dispatch traffic per GPU pair;
- :mod:`.rounds`: transfer orderings in incast-free rounds, their lower bound, baselines;
- :mod:`.placement`: the layer-time model, placement by load and GPU speed, co-location;
- :mod:`.ilp`: the exact placement (HiGHS) for small instances;
- :mod:`.record` (needs torch): the routing of a running tiny Mixtral.

Imports without torch.
"""

from .ilp import IlpResult, solve_placement
from .placement import (
    Cluster,
    MoELayer,
    Phases,
    colocated_placement,
    colocated_time,
    compute_time,
    identity_placement,
    load_speed_placement,
    phases,
)
from .rounds import (
    Round,
    RoundSchedule,
    check_schedule,
    fair_share_time,
    lower_bound,
    matching_schedule,
    port_bound,
    random_order_time,
    rotation_schedule,
)
from .traffic import dispatch_bytes, expert_loads, zipf_routing

__all__ = [
    "Cluster",
    "IlpResult",
    "MoELayer",
    "Phases",
    "Round",
    "RoundSchedule",
    "check_schedule",
    "colocated_placement",
    "colocated_time",
    "compute_time",
    "dispatch_bytes",
    "expert_loads",
    "fair_share_time",
    "identity_placement",
    "load_speed_placement",
    "lower_bound",
    "matching_schedule",
    "phases",
    "port_bound",
    "random_order_time",
    "rotation_schedule",
    "solve_placement",
    "zipf_routing",
]

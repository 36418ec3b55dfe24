"""All-to-all scheduling for expert-parallel MoE layers (Aurora's placement and ILP, used by its
artifact only, live in artifacts/aurora).

- :mod:`.traffic`: routing matrices (Zipf or recorded) -> dispatch traffic per GPU pair;
- :mod:`.rounds`: transfer orderings in incast-free rounds, their lower bound, baselines;
- :mod:`.record` (needs torch): the routing of a running tiny Mixtral.

Imports without torch.
"""

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
    "Round",
    "RoundSchedule",
    "check_schedule",
    "dispatch_bytes",
    "expert_loads",
    "fair_share_time",
    "lower_bound",
    "matching_schedule",
    "port_bound",
    "random_order_time",
    "rotation_schedule",
    "zipf_routing",
]

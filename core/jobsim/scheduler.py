"""The one scheduler interface of the job-level simulators.

A scheduler is an object with ``schedule(view) -> decision``. The simulator calls it when
something happens (an arrival, a block, a timeout, a timer: event-driven simulators) or at the
start of every round (round-based simulators), hands it a read-only view of the state, and
checks the decision before applying it: an invalid decision (an overdrawn budget, more GPUs
than the cluster has) raises :class:`InvalidDecision` instead of being silently repaired, so a
policy bug cannot inflate its own results.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

ViewT_contra = TypeVar("ViewT_contra", contravariant=True)
DecisionT_co = TypeVar("DecisionT_co", covariant=True)


class JobScheduler(Protocol[ViewT_contra, DecisionT_co]):
    """``schedule(view)`` returns the decision for the state in ``view``; it may keep its own
    state between calls (unlocked budgets, accumulated shares, a plan over future rounds),
    but must not mutate the view."""

    name: str

    def schedule(self, view: ViewT_contra) -> DecisionT_co: ...


class InvalidDecision(RuntimeError):
    """A scheduler asked for something the resources cannot give."""

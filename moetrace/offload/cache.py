"""The live cache's bookkeeping: which expert sits in which device slot. It is the reference cache
(moetrace/sim/reference.py, the spec `simulate` is checked against) with a live policy, so a live run
and a replay of its own trace count the same hits and misses."""

from __future__ import annotations

from moetrace.sim.policies import parse_live_policy
from moetrace.sim.reference import Placement, ReferenceCache

__all__ = ["Placement", "SlotCache"]


class SlotCache(ReferenceCache):
    """`capacity` device slots in each of `caches` caches (one per layer, or one pool) of `ids` experts."""

    def __init__(self, policy: str, capacity: int, caches: int, ids: int) -> None:
        super().__init__(parse_live_policy(policy).policy, capacity, caches, ids)

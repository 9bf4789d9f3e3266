"""arc: ARC (Megiddo & Modha, FAST '03) as libCacheSim implements it.

Residents sit in T1 (seen once lately) or T2 (seen again), ghosts of evicted ids in B1 and B2, all
in recency order; a target p (a float, from 0) for T1's size adapts: a miss found in B1 raises it by
max(|B2|/|B1|, 1) (at most C), one found in B2 lowers it by max(|B1|/|B2|, 1) (at least 0); both
enter T2. A hit moves to T2's most recent end. Any other miss, in a full cache: when |T1| + |B1| ≥ C
the oldest B1 id goes (if B1 is empty, T1's oldest is evicted with no ghost), else when all four
lists hold 2C ids the oldest B2 id goes; it enters T1. The victim (REPLACE): T1's oldest when T1 is
non-empty and |T1| > p (or = p for a miss found in B2), or when T2 is empty, and it becomes a B1
ghost; else T2's oldest, to B2. A guarded resident is passed over (the next oldest goes; if the
chosen list has none, the other list's)."""

import numpy as np

from moetrace.sim.policies import register_policy
from moetrace.sim.policies._shared import NONE, push, queues, unlink

T1, T2, B1, B2 = 0, 1, 2, 3
FRESH, FROM_B1, FROM_B2, NO_GHOST = 0, 1, 2, 3


@register_policy
class ARC:
    """ARC: recency (T1) and frequency (T2) lists balanced by ghost hits."""

    name = "arc"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        p = np.zeros(n_caches, np.float64)
        pending = np.zeros((n_caches, 2), np.int64)  # [1 + id of the miss being served, how it was found]
        limits = np.array([capacity], np.int64)
        return queues(n_caches, n_ids, 4), p, pending, limits

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        qs = state[0]
        unlink(qs, c, x)
        push(qs, c, T2, x)

    @staticmethod
    def miss(state, c, x, r):  # type: ignore[no-untyped-def]
        qs, p, pending, limits = state
        tail, size, where = qs[3], qs[4], qs[5]
        capacity = limits[0]
        found = FRESH
        if where[c, x] == B1:
            p[c] = min(p[c] + max(size[c, B2] / size[c, B1], 1.0), capacity)
            unlink(qs, c, x)
            found = FROM_B1
        elif where[c, x] == B2:
            p[c] = max(p[c] - max(size[c, B1] / size[c, B2], 1.0), 0.0)
            unlink(qs, c, x)
            found = FROM_B2
        elif size[c, T1] + size[c, T2] >= capacity:
            if size[c, T1] + size[c, B1] >= capacity:
                if size[c, B1] > 0:
                    unlink(qs, c, tail[c, B1])
                else:
                    found = NO_GHOST
            elif size[c, T1] + size[c, B1] + size[c, T2] + size[c, B2] >= 2 * capacity and size[c, B2] > 0:
                unlink(qs, c, tail[c, B2])
        pending[c, 0] = x + 1
        pending[c, 1] = found
        return True

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        qs, pending = state[0], state[2]
        found = pending[c, 1] if pending[c, 0] == x + 1 else FRESH
        pending[c, 0] = 0
        unlink(qs, c, x)  # a prefetch of a ghost id: the ghost entry goes
        push(qs, c, T2 if found in (FROM_B1, FROM_B2) else T1, x)

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        qs, p, pending = state[0], state[1], state[2]
        newer, tail, size = qs[0], qs[3], qs[4]
        found = pending[c, 1] if pending[c, 0] == x + 1 else FRESH
        t1 = size[c, T1]
        if found == NO_GHOST or (t1 > 0 and (t1 > p[c] or (t1 == p[c] and found == FROM_B2))) or size[c, T2] == 0:
            first, second = T1, T2
        else:
            first, second = T2, T1
        for q in (first, second):
            y = tail[c, q]
            while y != NONE:
                if not guarded[c, y]:
                    return y
                y = newer[c, y]
        return NONE

    @staticmethod
    def evict(state, c, x):  # type: ignore[no-untyped-def]
        qs, pending = state[0], state[2]
        q = qs[5][c, x]
        unlink(qs, c, x)
        if pending[c, 1] == NO_GHOST and pending[c, 0] != 0 and q == T1:
            pending[c, 1] = FRESH  # T1's oldest leaves without a ghost
            return
        push(qs, c, B1 if q == T1 else B2, x)

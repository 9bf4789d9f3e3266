"""lfu: evict the resident needed fewest times so far (counted over the whole stream, not only
while resident; a prefetch is not a need); ties: the oldest last use, then the smallest id."""

import numpy as np

from moetrace.sim.policies import register_policy


@register_policy
class LFU:
    """Evict the resident needed fewest times so far, over the whole stream (ties: oldest last use, smallest id)."""

    name = "lfu"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        return np.zeros((n_caches, n_ids), np.int64), np.zeros((n_caches, n_ids), np.int64)  # needs, last use

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        state[0][c, x] += 1
        state[1][c, x] = r

    @staticmethod
    def miss(state, c, x, r):  # type: ignore[no-untyped-def]
        state[0][c, x] += 1  # a need, kept or streamed
        return True

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        state[1][c, x] = r

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        needs, last_use = state
        best = -1
        for s in range(count):
            y = residents[s]
            if guarded[c, y]:
                continue
            if best < 0 or (needs[c, y], last_use[c, y], y) < (needs[c, best], last_use[c, best], best):
                best = y
        return best

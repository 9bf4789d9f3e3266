"""belady: evict the resident whose next need in this cache is farthest away (never needed again
first); ties: the smallest id. The optimal demand policy: an upper bound for every other one. A
prefetched expert's next need counts as never until it is used."""

import numpy as np

from moetrace.sim.policies import register_policy


@register_policy
class Belady:
    """Evict the resident needed again farthest in the future (knows the future: a bound)."""

    name = "belady"
    knows = "future"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        return (np.zeros((n_caches, n_ids), np.int64),)  # next need (request index)

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        state[0][c, x] = next_need

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        state[0][c, x] = next_need

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        upcoming = state[0]
        best = -1
        for s in range(count):
            y = residents[s]
            if guarded[c, y]:
                continue
            if best < 0 or upcoming[c, y] > upcoming[c, best] or (upcoming[c, y] == upcoming[c, best] and y < best):
                best = y
        return best

"""belady: evict the resident whose next need in this cache is farthest away (never needed again
first); ties: the smallest id. Optimal among policies that keep every missed expert: their bound. A
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
    def key(state, c, x):  # type: ignore[no-untyped-def]
        return x - state[0][c, x] * state[0].shape[1]  # the farthest next need first; ties: the smallest id

"""lru: evict the resident used longest ago; ties: the smallest id."""

import numpy as np

from moetrace.sim.policies import register_policy


@register_policy
class LRU:
    """Evict the resident used longest ago (ties: smallest id)."""

    name = "lru"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        return (np.zeros((n_caches, n_ids), np.int64),)  # last use (request index)

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        state[0][c, x] = r

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        state[0][c, x] = r

    @staticmethod
    def key(state, c, x):  # type: ignore[no-untyped-def]
        return state[0][c, x] * state[0].shape[1] + x

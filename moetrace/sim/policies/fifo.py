"""fifo: evict the resident inserted first; ties: the smallest id."""

import numpy as np

from moetrace.sim.policies import register_policy


@register_policy
class FIFO:
    """Evict the resident inserted first (ties: smallest id)."""

    name = "fifo"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        return (np.zeros((n_caches, n_ids), np.int64),)  # insertion (request index)

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        state[0][c, x] = r

    @staticmethod
    def key(state, c, x):  # type: ignore[no-untyped-def]
        return state[0][c, x] * state[0].shape[1] + x

"""static: keep only the `capacity` experts most needed in a first share of the stream (per cache;
ties: the smallest id), loaded at their first need and never evicted; every other expert is loaded
when needed and not kept. A baseline that learns from the replayed stream itself."""

import numpy as np

from moetrace.sim.policies import register_policy


@register_policy
class Static:
    """Keep the experts most needed in the stream's first share, never evict; stream the rest."""

    name = "static"
    knows = "warmup"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        pinned = np.zeros((n_caches, n_ids), np.bool_)
        for c in range(n_caches):
            pinned[c, np.argsort(-warm[c], kind="stable")[:capacity]] = True
        return (pinned,)

    @staticmethod
    def miss(state, c, x, r):  # type: ignore[no-untyped-def]
        return state[0][c, x]

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        return -1  # never reached: only `capacity` experts are ever kept

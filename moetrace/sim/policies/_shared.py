"""What several policies' hooks share (numba-compiled; not a policy): queues of expert ids kept as
doubly linked lists in arrays, and counting the residents that may be evicted."""

from __future__ import annotations

import numpy as np
from numba import njit

NONE = -1


def queues(n_caches: int, n_ids: int, n_queues: int) -> tuple[np.ndarray, ...]:
    """Empty queues: (newer, older, head, tail, size, where). Each id is in at most one queue of its
    cache; `head` is the newest entry, `tail` the oldest; `where[c, x]` is x's queue (−1: none)."""
    return (
        np.full((n_caches, n_ids), NONE, np.int64),
        np.full((n_caches, n_ids), NONE, np.int64),
        np.full((n_caches, n_queues), NONE, np.int64),
        np.full((n_caches, n_queues), NONE, np.int64),
        np.zeros((n_caches, n_queues), np.int64),
        np.full((n_caches, n_ids), NONE, np.int64),
    )


@njit(inline="always")
def push(qs, c, q, x):  # type: ignore[no-untyped-def]
    """Put x at the head (newest end) of queue q."""
    newer, older, head, tail, size, where = qs
    first = head[c, q]
    newer[c, x] = NONE
    older[c, x] = first
    if first != NONE:
        newer[c, first] = x
    else:
        tail[c, q] = x
    head[c, q] = x
    size[c, q] += 1
    where[c, x] = q


@njit(inline="always")
def unlink(qs, c, x):  # type: ignore[no-untyped-def]
    """Take x out of its queue (nothing if it is in none)."""
    newer, older, head, tail, size, where = qs
    q = where[c, x]
    if q == NONE:
        return
    before, after = newer[c, x], older[c, x]
    if before != NONE:
        older[c, before] = after
    else:
        head[c, q] = after
    if after != NONE:
        newer[c, after] = before
    else:
        tail[c, q] = before
    newer[c, x] = NONE
    older[c, x] = NONE
    size[c, q] -= 1
    where[c, x] = NONE


@njit(inline="always")
def unguarded(c, guarded, residents, count):  # type: ignore[no-untyped-def]
    """How many of cache c's residents may be evicted now."""
    n = 0
    for s in range(count):
        if not guarded[c, residents[s]]:
            n += 1
    return n

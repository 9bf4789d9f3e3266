"""s3fifo: S3-FIFO (Yang et al., SOSP '23) as libCacheSim implements it (small-size ratio 0.1,
ghost-size ratio 0.9, move-to-main threshold 2).

Three FIFO queues: small (S = ⌊C/10⌋ slots, at least 1), main (the other M = C − S) and a ghost of
ids (⌊9C/10⌋, at least 1) dropped from small. A hit counts (`freq += 1`). A miss found in the ghost
enters main; before the cache's first eviction a new expert enters main once small holds S; else it
enters small. To evict: from main when main holds more than M or small has no candidate, else from
small. Small's oldest with freq ≥ 2 moves to main (freq 0) and the next is tried; the first with
less is dropped and its id enters the ghost. Main's oldest with freq ≥ 1 is reinserted with freq
min(freq, 3) − 1; the first with 0 is dropped. A guarded resident is passed over where it stands.

libCacheSim refuses C < 10 and admits nothing for 10 ≤ C < 20 (a small queue of one object takes no
object); here small always takes at least one, so the two agree from C = 20 up."""

import numpy as np

from moetrace.sim.policies import register_policy
from moetrace.sim.policies._shared import NONE, push, queues, unlink

SMALL, MAIN, GHOST = 0, 1, 2


@register_policy
class S3FIFO:
    """S3-FIFO: a small FIFO filters one-hit experts, a main FIFO with reinsertion keeps the rest, a ghost recalls."""

    name = "s3fifo"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        small = max(1, int(capacity * 0.1))
        limits = np.array([small, capacity - small, max(1, int(capacity * 0.9))], np.int64)  # S, M, G
        freq = np.zeros((n_caches, n_ids), np.int64)
        flags = np.zeros((n_caches, 2), np.int64)  # [has evicted, 1 + id of a ghost hit pending insertion]
        return queues(n_caches, n_ids, 3), freq, limits, flags

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        state[1][c, x] += 1

    @staticmethod
    def miss(state, c, x, r):  # type: ignore[no-untyped-def]
        qs, flags = state[0], state[3]
        if qs[5][c, x] == GHOST:  # recalled before this request's evictions can push it out
            unlink(qs, c, x)
            flags[c, 1] = x + 1
        return True

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        qs, freq, limits, flags = state
        size = qs[4]
        recalled = flags[c, 1] == x + 1
        flags[c, 1] = 0
        if qs[5][c, x] == GHOST:  # a prefetch of a ghost id: the ghost entry goes
            unlink(qs, c, x)
        freq[c, x] = 0
        if recalled or (flags[c, 0] == 0 and size[c, SMALL] >= limits[0]):
            push(qs, c, MAIN, x)
        else:
            push(qs, c, SMALL, x)

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        qs, freq, limits, flags = state
        newer, tail, size, where = qs[0], qs[3], qs[4], qs[5]
        in_small = in_main = 0
        for s in range(count):
            y = residents[s]
            if not guarded[c, y]:
                if where[c, y] == SMALL:
                    in_small += 1
                else:
                    in_main += 1
        if in_small + in_main == 0:
            return NONE
        flags[c, 0] = 1
        while True:
            if in_main > 0 and (size[c, MAIN] > limits[1] or in_small == 0):
                y = tail[c, MAIN]
                while True:  # a 2-bit clock over main
                    if y == NONE:
                        y = tail[c, MAIN]
                    following = newer[c, y]
                    if not guarded[c, y]:
                        if freq[c, y] == 0:
                            return y
                        freq[c, y] = min(freq[c, y], 3) - 1
                        unlink(qs, c, y)
                        push(qs, c, MAIN, y)
                    y = following
            y = tail[c, SMALL]
            while y != NONE:
                following = newer[c, y]
                if not guarded[c, y]:
                    if freq[c, y] < 2:
                        return y
                    unlink(qs, c, y)  # seen twice while small: promoted, freq 0
                    freq[c, y] = 0
                    push(qs, c, MAIN, y)
                    in_small -= 1
                    in_main += 1
                y = following

    @staticmethod
    def evict(state, c, x):  # type: ignore[no-untyped-def]
        qs, limits = state[0], state[2]
        from_small = qs[5][c, x] == SMALL
        unlink(qs, c, x)
        if from_small:
            if qs[4][c, GHOST] >= limits[2]:
                unlink(qs, c, qs[3][c, GHOST])  # the oldest ghost id is forgotten
            push(qs, c, GHOST, x)

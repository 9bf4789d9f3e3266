"""sieve: SIEVE (Zhang et al., NSDI '24) as libCacheSim implements it. One queue, newest first; a
hit sets the resident's visited bit; a new expert enters at the head unvisited. To evict, a hand
walks from where it stopped (at first: the tail, the oldest) towards the head, clearing visited
bits, wrapping to the tail past the head; the first unvisited resident goes, and the hand rests on
its newer neighbour. A guarded resident is passed over, its bit kept."""

import numpy as np

from moetrace.sim.policies import register_policy
from moetrace.sim.policies._shared import NONE, push, queues, unguarded, unlink

QUEUE = 0


@register_policy
class Sieve:
    """SIEVE: a hand sweeps from the oldest, sparing visited residents once; new experts enter unvisited."""

    name = "sieve"

    @staticmethod
    def state(n_caches, n_ids, capacity, warm):  # type: ignore[no-untyped-def]
        visited = np.zeros((n_caches, n_ids), np.bool_)
        hand = np.full(n_caches, NONE, np.int64)
        return queues(n_caches, n_ids, 1), visited, hand

    @staticmethod
    def hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
        state[1][c, x] = True

    @staticmethod
    def insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
        state[1][c, x] = False
        push(state[0], c, QUEUE, x)

    @staticmethod
    def victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
        qs, visited, hand = state
        newer, tail = qs[0], qs[3]
        if unguarded(c, guarded, residents, count) == 0:
            return NONE
        y = hand[c] if hand[c] != NONE else tail[c, QUEUE]
        while True:
            if not guarded[c, y]:
                if not visited[c, y]:
                    return y
                visited[c, y] = False
            y = newer[c, y]
            if y == NONE:
                y = tail[c, QUEUE]

    @staticmethod
    def evict(state, c, x):  # type: ignore[no-untyped-def]
        qs, visited, hand = state
        hand[c] = qs[0][c, x]  # its newer neighbour (none past the head: the next sweep starts at the tail)
        unlink(qs, c, x)

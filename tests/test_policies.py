"""Golden tests of the stateful policies: small sequences worked out by hand from each policy's rule
(the module docstrings and docs/simulation.md), checked request by request in the reference cache
and in total in the compiled engine. libCacheSim's agreement is tests/test_libcachesim.py."""

from __future__ import annotations

import numpy as np
from test_cache_model import engine

from moetrace.sim.policies._shared import NONE
from moetrace.sim.reference import ReferenceCache

A, B, C, D, E = range(5)


def served(policy: str, sequence: list[int], capacity: int) -> tuple[list[int], ReferenceCache]:
    """Which requests hit (1) or missed (0), one expert per request, and the cache afterwards."""
    cache = ReferenceCache(policy, capacity, 1, 8)
    pattern = [cache.request(0, [x]).hits for x in sequence]
    total = engine(policy, [(0, [x]) for x in sequence], None, 1, 8, capacity)
    assert (total.hits, total.misses) == (sum(pattern), len(pattern) - sum(pattern))
    return pattern, cache


def residents(cache: ReferenceCache) -> set[int]:
    return set(cache.slot_of[0])


def queue(cache: ReferenceCache, q: int) -> list[int]:
    """Queue q of the policy's state, newest first."""
    older, head = cache.state[0][1], cache.state[0][2]
    out, x = [], head[0, q]
    while x != NONE:
        out.append(int(x))
        x = older[0, x]
    return out


def test_sieve_spares_a_visited_resident_once() -> None:
    # A B C fill [C B A]; A is hit (visited). D: the hand starts at the tail A, clears it, evicts B and
    # rests on C. B: C is unvisited, evicted, the hand rests on D. E: D goes. A is still there: a hit.
    pattern, cache = served("sieve", [A, B, C, A, D, B, E, A], 3)
    assert pattern == [0, 0, 0, 1, 0, 0, 0, 1]
    assert queue(cache, 0) == [E, B, A]
    lru, _ = served("lru", [A, B, C, A, D, B, E, A], 3)
    assert lru == [0, 0, 0, 1, 0, 0, 0, 0]  # LRU lost A to the scan


def test_s3fifo_filters_through_small_and_recalls_from_the_ghost() -> None:
    # capacity 2: small 1, main 1, ghost 1. A enters small and is hit; B enters main (small full before
    # any eviction); C evicts A from small (freq 1 < 2) to the ghost; A is recalled into main, evicting
    # C to the ghost; B is hit; D: main is over its size, B (freq 1) is reinserted with freq 0 and A
    # (freq 0) goes, not to the ghost; C is recalled (D to the ghost); D is recalled, B goes.
    pattern, cache = served("s3fifo", [A, A, B, C, A, B, D, C, D], 2)
    assert pattern == [0, 1, 0, 0, 0, 1, 0, 0, 0]
    small, main, ghost = (queue(cache, q) for q in range(3))
    assert (small, main, ghost) == ([], [D, C], [])  # D's ghost entry went when it was recalled


def test_arc_moves_its_target_on_ghost_hits() -> None:
    # capacity 2: A B fill T1; A is hit (T2). C: REPLACE takes T1's oldest B to B1. B is found in B1:
    # p = 1; |T1| = 1 is not > p, so T2's A goes to B2. D: again T2's oldest, B, to B2. A is found in
    # B2: p = 0; T1's oldest C goes to B1; A enters T2.
    pattern, cache = served("arc", [A, B, A, C, B, D, A], 2)
    assert pattern == [0, 0, 1, 0, 0, 0, 0]
    t1, t2, b1, b2 = (queue(cache, q) for q in range(4))
    assert (t1, t2, b1, b2) == ([D], [A], [C], [B])
    assert cache.state[1][0] == 0.0
    assert residents(cache) == {A, D}


def test_stateful_policies_never_evict_a_needed_expert() -> None:
    """Need-sets of several experts: a victim is never in the need-set being served (the reference
    asserts it at each eviction), and every expert of a need-set is resident or streamed after it."""
    rng = np.random.default_rng(7)
    for policy in ("s3fifo", "sieve", "arc"):
        cache = ReferenceCache(policy, 4, 1, 10)
        for _ in range(500):
            need = sorted(rng.choice(10, int(rng.integers(1, 5)), replace=False).tolist())
            placement = cache.request(0, need)
            assert set(need) <= residents(cache) | set(placement.streamed)
            cache.check()

"""The compiled replay engine (numba): the reference cache's fast twin, with the cost model.

One loop over requests implements `moetrace/sim/reference.py` (the spec) exactly, with the
policy's hooks compiled in: counting, guarding the need-set, serving it in ascending id order,
prefetches loaded after a request is served, and the timeline with one copy engine (a request starts
when its experts are resident; demand misses queue behind earlier transfers; prefetches are issued
after the request starts and overlap its compute). The tests replay random streams through both and
compare every count.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit

from moetrace.sim.policies import get_policy

NOT_RESIDENT = -1
GUARDED = np.iinfo(np.int64).max
"""The rank of a guarded resident (and of an empty slot): never the smallest while any other is free."""

__all__ = ["compiled", "lru_ranks", "next_needs"]


@functools.cache
def compiled(name: str) -> Any:
    """The engine with policy `name`'s hooks compiled in (once per process)."""
    return _build(*(get_policy(name).hook(hook) for hook in HOOK_ORDER))


HOOK_ORDER = ("hit", "miss", "key", "victim", "evict", "insert")


def _build(hit: Any, miss: Any, key: Any, victim: Any, evict: Any, insert: Any) -> Any:
    """The engine's loop with these hooks as constants (numba inlines them)."""

    @njit(nogil=True)
    def run(
        ranked: bool,
        state: Any,
        cache_of: np.ndarray,
        offsets: np.ndarray,
        ids: np.ndarray,
        upcoming: np.ndarray,
        pf_cache: np.ndarray,
        pf_offsets: np.ndarray,
        pf_ids: np.ndarray,
        n_caches: int,
        n_ids: int,
        capacity: int,
        transfer_s: float,
        layer_s: float,
    ) -> tuple[int, int, int, int, int, int, float, float]:
        """Replay requests (`cache_of`, need-sets `ids[offsets[r]:offsets[r+1]]`) with prefetches after
        them; a `ranked` policy's keys are kept beside the slots (GUARDED while guarded), so its victim
        is one scan for the smallest."""
        never = len(cache_of) + 1
        slot = np.full((n_caches, n_ids), NOT_RESIDENT, np.int64)
        residents = np.full((n_caches, capacity), NOT_RESIDENT, np.int64)
        rank = np.full((n_caches, capacity), GUARDED, np.int64)
        count = np.zeros(n_caches, np.int64)
        guarded = np.zeros((n_caches, n_ids), np.bool_)
        prefetched = np.zeros((n_caches, n_ids), np.bool_)
        ready = np.zeros((n_caches, n_ids), np.float64)
        hits = misses = streamed = pf_loads = useful = wasted = 0
        now = copy_free = stall = 0.0
        any_prefetch = len(pf_ids) > 0
        for r in range(len(cache_of)):
            c = cache_of[r]
            start, end = offsets[r], offsets[r + 1]
            # 1. count hits and misses before anything moves; guard the need-set
            starts_at = now
            missing = 0
            for j in range(start, end):
                x = ids[j]
                guarded[c, x] = True
                s = slot[c, x]
                if s != NOT_RESIDENT:
                    rank[c, s] = GUARDED
                    hits += 1
                    if any_prefetch:
                        if prefetched[c, x]:
                            useful += 1
                            prefetched[c, x] = False
                        if ready[c, x] > starts_at:
                            starts_at = ready[c, x]  # prefetched, still in flight
                else:
                    misses += 1
                    missing += 1
            if missing > 0:
                copy_free = max(now, copy_free) + missing * transfer_s
                starts_at = max(starts_at, copy_free)
            # 2. serve the need-set in ascending id order
            for j in range(start, end):
                x = ids[j]
                if slot[c, x] != NOT_RESIDENT:
                    hit(state, c, x, r, upcoming[j])
                    continue
                s = NOT_RESIDENT
                if miss(state, c, x, r):
                    s = _slot_for(
                        key, victim, evict, ranked, state, c, x, guarded, residents, rank, count, slot, capacity
                    )
                if s == NOT_RESIDENT:
                    streamed += 1
                    continue
                old = residents[c, s]
                if old != NOT_RESIDENT and prefetched[c, old]:  # evicting a prefetch that was never used
                    wasted += 1
                    prefetched[c, old] = False
                residents[c, s] = x
                slot[c, x] = s
                rank[c, s] = GUARDED
                insert(state, c, x, r, upcoming[j], True)
                ready[c, x] = copy_free
            _release(key, ranked, state, c, ids, start, end, guarded, slot, rank)
            stall += starts_at - now
            now = starts_at
            # 3. prefetch for a later request, overlapping this layer's compute
            t = pf_cache[r]
            if t >= 0:
                first, last = pf_offsets[r], pf_offsets[r + 1]
                _guard(t, pf_ids, first, last, guarded, slot, rank)
                if t == c:  # one pool: the need-set just served stays
                    _guard(c, ids, start, end, guarded, slot, rank)
                for j in range(first, last):
                    x = pf_ids[j]
                    if slot[t, x] != NOT_RESIDENT:
                        continue
                    s = _slot_for(
                        key, victim, evict, ranked, state, t, x, guarded, residents, rank, count, slot, capacity
                    )
                    if s == NOT_RESIDENT:
                        break
                    old = residents[t, s]
                    if old != NOT_RESIDENT and prefetched[t, old]:
                        wasted += 1
                        prefetched[t, old] = False
                    residents[t, s] = x
                    slot[t, x] = s
                    rank[t, s] = GUARDED
                    insert(state, t, x, r, never, False)
                    prefetched[t, x] = True
                    pf_loads += 1
                    copy_free = max(now, copy_free) + transfer_s
                    ready[t, x] = copy_free
                _release(key, ranked, state, t, pf_ids, first, last, guarded, slot, rank)
                if t == c:
                    _release(key, ranked, state, c, ids, start, end, guarded, slot, rank)
            now += layer_s
        for c in range(n_caches):
            for s in range(count[c]):
                if prefetched[c, residents[c, s]]:
                    wasted += 1
        return hits, misses, streamed, pf_loads, useful, wasted, stall, now

    return run


@njit(inline="always")
def _guard(c, xs, first, last, guarded, slot, rank):  # type: ignore[no-untyped-def]
    """Guard xs[first:last]: no victim among them."""
    for j in range(first, last):
        x = xs[j]
        guarded[c, x] = True
        if slot[c, x] != NOT_RESIDENT:
            rank[c, slot[c, x]] = GUARDED


@njit(inline="always")
def _release(key, ranked, state, c, xs, first, last, guarded, slot, rank):  # type: ignore[no-untyped-def]
    """Unguard xs[first:last]; residents among them take their (possibly new) keys."""
    for j in range(first, last):
        x = xs[j]
        guarded[c, x] = False
        if ranked and slot[c, x] != NOT_RESIDENT:
            rank[c, slot[c, x]] = key(state, c, x)


@njit(inline="always")
def _slot_for(key, victim, evict, ranked, state, c, x, guarded, residents, rank, count, slot, capacity):  # type: ignore[no-untyped-def]
    """A free slot of cache c, or the slot of the policy's victim (evicted now); −1 when every
    resident is guarded."""
    if count[c] < capacity:
        count[c] += 1
        return count[c] - 1
    if ranked:
        row = rank[c]
        best = 0
        best_rank = row[0]
        for s in range(1, capacity):
            if row[s] < best_rank:
                best = s
                best_rank = row[s]
        if best_rank == GUARDED:
            return NOT_RESIDENT
        v = residents[c, best]
    else:
        v = victim(state, c, x, guarded, residents[c], capacity)
        if v == NOT_RESIDENT:
            return NOT_RESIDENT
    evict(state, c, v)
    s = slot[c, v]
    slot[c, v] = NOT_RESIDENT
    return s


@njit(nogil=True, cache=True)
def next_needs(cache_of: np.ndarray, offsets: np.ndarray, ids: np.ndarray, n_caches: int, n_ids: int) -> np.ndarray:
    """For each access, the next request of the same cache that needs the same id (R + 1 if none)."""
    never = len(cache_of) + 1
    seen = np.full((n_caches, n_ids), never, np.int64)
    upcoming = np.empty(len(ids), np.int64)
    for r in range(len(cache_of) - 1, -1, -1):
        c = cache_of[r]
        for j in range(offsets[r], offsets[r + 1]):
            upcoming[j] = seen[c, ids[j]]
            seen[c, ids[j]] = r
    return upcoming


@njit(nogil=True, cache=True)
def lru_ranks(cache_of: np.ndarray, offsets: np.ndarray, ids: np.ndarray, n_caches: int, n_ids: int) -> np.ndarray:
    """Each access's LRU stack position before its request (−1: never used before in its cache).

    Residents rank by last use, most recent first, ties broken like eviction (larger ids first, so
    the smallest id leaves first). An access hits a C-slot LRU cache iff its position < C, for
    every C at least as large as the largest need-set (the inclusion property): one pass gives the
    hit rate at every such capacity.
    """
    last = np.full((n_caches, n_ids), -1, np.int64)
    out = np.empty(len(ids), np.int64)
    for r in range(len(cache_of)):
        c = cache_of[r]
        for j in range(offsets[r], offsets[r + 1]):
            x = ids[j]
            mine = last[c, x]
            if mine < 0:
                out[j] = -1
                continue
            position = 0
            for y in range(n_ids):
                other = last[c, y]
                if other > mine or (other == mine and y > x):
                    position += 1
            out[j] = position
        for j in range(offsets[r], offsets[r + 1]):
            last[c, ids[j]] = r
    return out

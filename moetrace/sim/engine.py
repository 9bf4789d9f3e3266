"""The compiled replay engine (numba): demand policies, prefetching and the transfer-cost model.

One loop over requests implements reference.py's semantics exactly, with each policy's key
function compiled in, plus prefetches (loaded into the target request's cache after a request is
served) and a timeline with one copy engine: a layer starts when its experts are resident, demand
misses queue behind earlier transfers, prefetches are issued when a layer starts and overlap its
compute. Each resident's eviction key is kept beside its slot and refreshed when the resident is
used; the residents the current request needs hold the largest key until then, so choosing a
victim is one branch-free scan for the smallest key over the cache's slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

NOT_RESIDENT = -1
GUARDED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Counts:
    hits: int
    misses: int
    streamed: int
    """Misses loaded but not kept (every resident was needed by the same request)."""
    prefetch_loads: int
    useful_prefetches: int
    wasted_prefetches: int
    stall_s: float
    total_s: float

    @property
    def loads(self) -> int:
        return self.misses + self.prefetch_loads


@njit(nogil=True, cache=True)
def _replay(
    key: Any,
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
    horizon = len(cache_of) + 1
    slot = np.full((n_caches, n_ids), NOT_RESIDENT, np.int64)
    resident = np.full((n_caches, capacity), NOT_RESIDENT, np.int64)
    rank = np.zeros((n_caches, capacity), np.int64)  # the resident's eviction key: smallest goes first
    count = np.zeros(n_caches, np.int64)
    last_use = np.zeros((n_caches, n_ids), np.int64)
    inserted = np.zeros((n_caches, n_ids), np.int64)
    needs = np.zeros((n_caches, n_ids), np.int64)
    prefetched = np.zeros((n_caches, n_ids), np.bool_)
    ready = np.zeros((n_caches, n_ids), np.float64)
    held = np.zeros(max(1, _widest(pf_offsets)), np.int64)  # keys set aside while a prefetch runs
    held_need = np.zeros(max(1, _widest(offsets)), np.int64)
    hits = misses = streamed = pf_loads = useful = wasted = 0
    now = copy_free = stall = 0.0
    any_prefetch = len(pf_ids) > 0
    for r in range(len(cache_of)):
        c = cache_of[r]
        start, end = offsets[r], offsets[r + 1]
        # 1. count hits and misses before anything moves; guard the need-set's residents
        starts_at = now
        missing = 0
        for j in range(start, end):
            x = ids[j]
            s = slot[c, x]
            if s != NOT_RESIDENT:
                hits += 1
                rank[c, s] = GUARDED  # needed now: not a victim; its key is refreshed in step 3
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
        # 2. insert the missing experts in ascending id order
        for j in range(start, end):
            x = ids[j]
            if slot[c, x] != NOT_RESIDENT:
                continue
            s = _slot_for(c, rank, count, capacity)
            if s < 0:
                streamed += 1
                continue
            old = resident[c, s]
            if old != NOT_RESIDENT:
                slot[c, old] = NOT_RESIDENT
                if any_prefetch and prefetched[c, old]:  # evicting a prefetch that was never used
                    wasted += 1
                    prefetched[c, old] = False
            resident[c, s] = x
            slot[c, x] = s
            rank[c, s] = GUARDED
            inserted[c, x] = r
            if any_prefetch:
                ready[c, x] = copy_free
        # 3. mark every needed expert used now, and refresh its key
        for j in range(start, end):
            x = ids[j]
            last_use[c, x] = r
            needs[c, x] += 1
            s = slot[c, x]
            if s != NOT_RESIDENT:
                rank[c, s] = key(r, inserted[c, x], needs[c, x], upcoming[j], x, n_ids, horizon)
        stall += starts_at - now
        now = starts_at
        # 4. prefetch for a later request, overlapping this layer's compute
        t = pf_cache[r]
        if t >= 0:
            first, last = pf_offsets[r], pf_offsets[r + 1]
            # guard the prefetch list's residents (and, in one pool, this request's need-set) meanwhile
            for j in range(first, last):
                s = slot[t, pf_ids[j]]
                if s != NOT_RESIDENT:
                    held[j - first] = rank[t, s]
                    rank[t, s] = GUARDED
            if t == c:
                for j in range(start, end):
                    s = slot[c, ids[j]]
                    if s != NOT_RESIDENT:
                        held_need[j - start] = rank[c, s]
                        rank[c, s] = GUARDED
            for j in range(first, last):
                x = pf_ids[j]
                if slot[t, x] != NOT_RESIDENT:
                    continue  # resident already: its own key comes back below
                s = _slot_for(t, rank, count, capacity)
                if s < 0:
                    break
                old = resident[t, s]
                if old != NOT_RESIDENT:
                    slot[t, old] = NOT_RESIDENT
                    if prefetched[t, old]:
                        wasted += 1
                        prefetched[t, old] = False
                resident[t, s] = x
                slot[t, x] = s
                inserted[t, x] = r
                last_use[t, x] = r
                prefetched[t, x] = True
                rank[t, s] = GUARDED
                held[j - first] = key(r, r, needs[t, x], horizon, x, n_ids, horizon)
                pf_loads += 1
                copy_free = max(now, copy_free) + transfer_s
                ready[t, x] = copy_free
            for j in range(first, last):
                s = slot[t, pf_ids[j]]
                if s != NOT_RESIDENT and rank[t, s] == GUARDED:
                    rank[t, s] = held[j - first]
            if t == c:
                for j in range(start, end):
                    s = slot[c, ids[j]]
                    if s != NOT_RESIDENT and rank[c, s] == GUARDED:
                        rank[c, s] = held_need[j - start]
        now += layer_s
    for c in range(n_caches):
        for s in range(count[c]):
            if prefetched[c, resident[c, s]]:
                wasted += 1
    return hits, misses, streamed, pf_loads, useful, wasted, stall, now


@njit(inline="always")
def _slot_for(c, rank, count, capacity):  # type: ignore[no-untyped-def]
    """An empty slot of cache c, or the slot of the resident with the smallest key; −1 when every
    resident is guarded by the current request."""
    if count[c] < capacity:
        count[c] += 1
        return count[c] - 1
    best = 0
    best_rank = rank[c, 0]
    for s in range(1, capacity):
        if rank[c, s] < best_rank:
            best = s
            best_rank = rank[c, s]
    return -1 if best_rank == GUARDED else best


@njit(inline="always")
def _widest(offsets):  # type: ignore[no-untyped-def]
    widest = 0
    for i in range(len(offsets) - 1):
        widest = max(widest, offsets[i + 1] - offsets[i])
    return widest


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

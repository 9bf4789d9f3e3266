"""The replay loop (numba): the reference cache's fast twin, with the cost model.

This module is a template. `moetrace/sim/engine.py` writes one copy per policy into the user's cache
folder with the line marked `# HOOKS` replaced by that policy's hooks and flags, so numba compiles
each policy's loop once, with its hooks inlined and its flags as constants, and caches the machine
code on disk: a fresh process loads it instead of compiling again. As written here (with the
do-nothing hooks) it is what mypy, ruff and readers see.

One loop over requests implements `moetrace/sim/reference.py` (the spec) exactly: counting, guarding
the need-set, serving it in ascending id order, prefetches loaded after a request is served, and the
timeline with one copy engine (a request starts when its experts are resident; demand misses queue
behind earlier transfers; prefetches are issued after the request starts and overlap its compute).

The loop is resumable: every piece of cache state lives in arrays the caller owns (`Tables`), so a
stream replays chunk by chunk with memory bounded by the chunk, and the counts equal one long replay.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from moetrace.sim.policies import default_hooks

hit, miss, key, victim, evict, insert, RANKED, FUTURE = default_hooks()  # HOOKS

NOT_RESIDENT = -1
GUARDED = np.iinfo(np.int64).max
"""The rank of a guarded resident (and of an empty slot): never the smallest while any other is free.
A ranked policy's guard is its rank; `guarded` is kept for policies that name their own victim."""

# totals: what `run` adds up across chunks (int64 array of TOTALS entries)
HITS, MISSES, STREAMED, PF_LOADS, USEFUL, WASTED = range(6)
TOTALS = 6
# clock: seconds (float64 array of CLOCK entries)
NOW, COPY_FREE, STALL = range(3)
CLOCK = 3


@njit(nogil=True, cache=True)
def run(  # type: ignore[no-untyped-def]
    state,
    cache_of,
    offsets,
    ids,
    upcoming,
    pf_cache,
    pf_offsets,
    pf_ids,
    any_prefetch,
    first_request,
    never,
    capacity,
    transfer_s,
    layer_s,
    slot,
    residents,
    rank,
    count,
    guarded,
    prefetched,
    ready,
    totals,
    clock,
):
    """Replay requests `first_request + r` (cache `cache_of[r]`, need-set `ids[offsets[r]:offsets[r+1]]`,
    `upcoming[j]` the request of access j's next need when the policy knows the future) with the
    prefetches after them (`any_prefetch`: this replay has prefetched, so track what prefetches did); cache state in `slot` (caches, ids), `residents`/`rank` (caches, capacity),
    `count`, `guarded`/`prefetched`/`ready` (caches, ids); sums into `totals` and `clock`."""
    hits = misses = streamed = pf_loads = useful = wasted = 0
    now, copy_free, stall = clock[NOW], clock[COPY_FREE], clock[STALL]
    planned = len(pf_ids) > 0
    for i in range(len(cache_of)):
        r = first_request + i
        c = cache_of[i]
        start, end = offsets[i], offsets[i + 1]
        # 1. count hits and misses before anything moves; guard the need-set
        starts_at = now
        missing = 0
        for j in range(start, end):
            x = ids[j]
            if not RANKED:
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
            next_need = upcoming[j] if FUTURE else 0
            if slot[c, x] != NOT_RESIDENT:
                hit(state, c, x, r, next_need)
                continue
            s = NOT_RESIDENT
            if miss(state, c, x, r):
                s = _slot_for(state, c, x, guarded, residents, rank, count, slot, capacity)
            if s == NOT_RESIDENT:
                streamed += 1
                continue
            old = residents[c, s]
            if any_prefetch and old != NOT_RESIDENT and prefetched[c, old]:  # a prefetch never used
                wasted += 1
                prefetched[c, old] = False
            residents[c, s] = x
            slot[c, x] = s
            rank[c, s] = GUARDED
            insert(state, c, x, r, next_need, True)
            if any_prefetch:
                ready[c, x] = copy_free
        _release(state, c, ids, start, end, guarded, slot, rank)
        stall += starts_at - now
        now = starts_at
        # 3. prefetch for a later request, overlapping this layer's compute
        t = pf_cache[i] if planned else -1
        if t >= 0:
            first, last = pf_offsets[i], pf_offsets[i + 1]
            _guard(t, pf_ids, first, last, guarded, slot, rank)
            if t == c:  # one pool: the need-set just served stays
                _guard(c, ids, start, end, guarded, slot, rank)
            for j in range(first, last):
                x = pf_ids[j]
                if slot[t, x] != NOT_RESIDENT:
                    continue
                s = _slot_for(state, t, x, guarded, residents, rank, count, slot, capacity)
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
            _release(state, t, pf_ids, first, last, guarded, slot, rank)
            if t == c:
                _release(state, c, ids, start, end, guarded, slot, rank)
        now += layer_s
    totals[HITS] += hits
    totals[MISSES] += misses
    totals[STREAMED] += streamed
    totals[PF_LOADS] += pf_loads
    totals[USEFUL] += useful
    totals[WASTED] += wasted
    clock[NOW], clock[COPY_FREE], clock[STALL] = now, copy_free, stall


@njit(inline="always")
def _guard(c, xs, first, last, guarded, slot, rank):  # type: ignore[no-untyped-def]
    """Guard xs[first:last]: no victim among them."""
    for j in range(first, last):
        x = xs[j]
        if not RANKED:
            guarded[c, x] = True
        if slot[c, x] != NOT_RESIDENT:
            rank[c, slot[c, x]] = GUARDED


@njit(inline="always")
def _release(state, c, xs, first, last, guarded, slot, rank):  # type: ignore[no-untyped-def]
    """Unguard xs[first:last]; residents among them take their (possibly new) keys."""
    for j in range(first, last):
        x = xs[j]
        if RANKED:
            s = slot[c, x]
            if s != NOT_RESIDENT:
                rank[c, s] = key(state, c, x)
        else:
            guarded[c, x] = False


@njit(inline="always")
def _slot_for(state, c, x, guarded, residents, rank, count, slot, capacity):  # type: ignore[no-untyped-def]
    """A free slot of cache c, or the slot of the policy's victim (evicted now); −1 when every
    resident is guarded."""
    if count[c] < capacity:
        count[c] += 1
        return count[c] - 1
    if RANKED:
        row = rank[c]
        best_rank = GUARDED
        for s in range(capacity):  # a plain minimum: the compiler vectorises it
            best_rank = min(best_rank, row[s])
        if best_rank == GUARDED:
            return NOT_RESIDENT
        best = 0
        while row[best] != best_rank:  # keys are unique
            best += 1
        v = residents[c, best]
    else:
        v = victim(state, c, x, guarded, residents[c], capacity)
        if v == NOT_RESIDENT:
            return NOT_RESIDENT
    evict(state, c, v)
    s = slot[c, v]
    slot[c, v] = NOT_RESIDENT
    return s

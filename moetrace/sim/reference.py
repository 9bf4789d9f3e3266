"""The replay semantics in plain Python, written to be read rather than to be fast.

This is the specification the compiled engine must agree with to the access (the tests check
it), and the plain-Python baseline of the simulator benchmark. One cache per layer (or one pool);
at each request with need-set N:

1. hits = |N ∩ cache|, misses = |N − cache|, counted before anything moves;
2. missing experts are inserted in ascending id order; when the cache is full the victim is the
   resident, not in N, that the policy ranks first (ties as in the table below); when every
   resident is in N, the expert is loaded but not kept (it streams through);
3. every expert of N is marked used at this request.

| policy | victim | ties |
| --- | --- | --- |
| lru | oldest last use | smallest id |
| fifo | earliest insertion | smallest id |
| lfu | fewest needs so far (over the whole stream) | oldest last use, then smallest id |
| belady | next need in this cache farthest away (never = ∞) | smallest id |
"""

from __future__ import annotations

import math

POLICIES = ("lru", "fifo", "lfu", "belady")


def replay(requests: list[tuple[int, list[int]]], capacity: int, policy: str) -> tuple[int, int]:
    """(hits, misses) of `policy` over requests [(cache, need-set)] with `capacity` slots per cache."""
    if policy not in POLICIES:
        raise ValueError(policy)
    next_need = _next_needs(requests) if policy == "belady" else None
    caches: dict[int, set[int]] = {}
    last_use: dict[tuple[int, int], int] = {}
    inserted: dict[tuple[int, int], int] = {}
    needs: dict[tuple[int, int], int] = {}
    upcoming: dict[tuple[int, int], float] = {}
    hits = misses = 0
    for r, (cache_id, need) in enumerate(requests):
        cache = caches.setdefault(cache_id, set())
        wanted = sorted(set(need))
        for expert in wanted:
            if expert in cache:
                hits += 1
            else:
                misses += 1
        for expert in wanted:
            if expert in cache:
                continue
            if len(cache) >= capacity:
                candidates = [e for e in cache if e not in wanted]
                if not candidates:
                    continue  # streams through: loaded for this request, not kept
                cache.remove(
                    min(candidates, key=lambda e: _rank(policy, cache_id, e, last_use, inserted, needs, upcoming))
                )
            cache.add(expert)
            inserted[(cache_id, expert)] = r
        for expert in wanted:
            key = (cache_id, expert)
            last_use[key] = r
            needs[key] = needs.get(key, 0) + 1
            if next_need is not None:
                upcoming[key] = next_need[r][expert]
    return hits, misses


def _rank(policy: str, cache: int, expert: int, last_use: dict, inserted: dict, needs: dict, upcoming: dict) -> tuple:
    """Smaller ranks are evicted first."""
    key = (cache, expert)
    if policy == "lru":
        return (last_use[key], expert)
    if policy == "fifo":
        return (inserted[key], expert)
    if policy == "lfu":
        return (needs[key], last_use[key], expert)
    return (-upcoming[key], expert)  # belady: the farthest next need goes first


def _next_needs(requests: list[tuple[int, list[int]]]) -> list[dict[int, float]]:
    """For each request, each of its experts' next request index in the same cache (∞ if none)."""
    seen: dict[tuple[int, int], float] = {}
    out: list[dict[int, float]] = [dict() for _ in requests]
    for r in range(len(requests) - 1, -1, -1):
        cache_id, need = requests[r]
        for expert in set(need):
            out[r][expert] = seen.get((cache_id, expert), math.inf)
            seen[(cache_id, expert)] = r
    return out

"""The expert cache, in plain Python: the specification.

`ReferenceCache` is the one statement of the cache rules. `simulate`'s brute-force checks replay
through it, the live slot cache of `run --offload` *is* it, and the compiled engine
(`moetrace/sim/engine.py`) is its fast twin, checked against it access by access on random streams
(tests/test_cache_model.py). The policies' own rules are their hooks (`moetrace/sim/policies/`),
run here as plain Python.

A cache has `capacity` slots (one cache per layer, or one pool for all layers). At request r of
cache c with need-set N (distinct expert ids):

1. hits = |N ∩ cache|, misses = |N − cache|, counted before anything moves; N is guarded: none of
   its residents is evicted while r is served;
2. N is served in ascending id order: a resident is a hit (the policy's `hit`); a missing expert is
   offered to the policy (`miss`: keep it?), takes a free slot or the slot of the policy's victim
   (a resident not in N), and is inserted (`insert`); with no free slot and every resident in N, or
   when the policy does not keep it, it is loaded for this request only (it *streams*);
3. a prefetch after request r loads experts, best first, into a cache (stopping at the first that
   finds no slot); the prefetch list, and in one pool the need-set just served, are guarded
   meanwhile. A prefetched expert used later is a useful prefetch; one evicted (or left at the end)
   unused is wasted.

The timeline (`replay_counts`): one copy engine; a request's misses queue behind earlier transfers
and it starts when they and any prefetch in flight for its experts have landed; prefetches are
issued after the request starts and overlap its `layer_s` of compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.sim.policies import HOOKS, Policy, get_policy

NOT_RESIDENT = -1


@dataclass(frozen=True)
class Counts:
    """What a replay counts, and the cost model's times."""

    hits: int
    misses: int
    streamed: int
    """Misses loaded but not kept (every resident was needed by the same request, or the policy
    keeps only some experts)."""
    prefetch_loads: int
    useful_prefetches: int
    wasted_prefetches: int
    stall_s: float
    total_s: float

    @property
    def loads(self) -> int:
        return self.misses + self.prefetch_loads


@dataclass
class Placement:
    """What one request needs moved: (expert, slot) to load; experts to stream (no slot kept)."""

    hits: int = 0
    misses: int = 0
    loads: list[tuple[int, int]] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)


def check_capacity(capacity: int, top_k: int, ids_per_cache: int) -> None:
    """A cache must hold one token's experts and no more than there are to cache."""
    if capacity < top_k:
        raise InvalidArgumentError(f"capacity {capacity} is smaller than top-k ({top_k}): a token's experts must fit")
    if capacity > ids_per_cache:
        raise InvalidArgumentError(f"capacity {capacity} is more than the {ids_per_cache} experts there are to cache")


class ReferenceCache:
    """`capacity` slots in each of `n_caches` caches holding ids 0 … n_ids − 1, under `policy`."""

    def __init__(
        self, policy: str | Policy, capacity: int, n_caches: int, n_ids: int, warm: np.ndarray | None = None
    ) -> None:
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        if self.policy.knows == "warmup" and warm is None:
            raise InvalidArgumentError(f"{self.policy.name} needs the needs of a warm-up share of the stream")
        self.hooks: dict[str, Any] = {name: self.policy.hook(name, compiled=False) for name in HOOKS}
        self.state = self.policy.state(n_caches, n_ids, capacity, warm)
        self.capacity = capacity
        self.n_ids = n_ids
        self.residents = np.full((n_caches, capacity), NOT_RESIDENT, np.int64)
        """residents[c, slot]: the expert in that slot (−1: empty)."""
        self.count = [0] * n_caches
        """Slots in use: slots 0 … count − 1 (slots fill in order and stay full)."""
        self.slot_of: list[dict[int, int]] = [{} for _ in range(n_caches)]
        self.guarded = np.zeros((n_caches, n_ids), np.bool_)
        self.prefetched: list[set[int]] = [set() for _ in range(n_caches)]
        self.clock = 0
        """Requests served so far (the index of the next one)."""
        self.hits = self.misses = self.streamed = 0
        self.prefetch_loads = self.useful_prefetches = self.wasted_prefetches = 0

    def request(self, cache: int, need: list[int], next_need: dict[int, int] | None = None) -> Placement:
        """Serve one need-set of `cache`; `next_need[x]`: x's next need (for policies that know the future)."""
        placement = Placement()
        wanted = sorted(set(need))
        slots = self.slot_of[cache]
        r = self.clock
        for x in wanted:  # 1. count, and guard
            self.guarded[cache, x] = True
            if x in slots:
                placement.hits += 1
                if x in self.prefetched[cache]:
                    self.prefetched[cache].discard(x)
                    self.useful_prefetches += 1
            else:
                placement.misses += 1
        for x in wanted:  # 2. serve, ascending
            upcoming = next_need[x] if next_need is not None else 0
            if x in slots:
                self.hooks["hit"](self.state, cache, x, r, upcoming)
                continue
            slot = self._slot_for(cache, x) if self.hooks["miss"](self.state, cache, x, r) else NOT_RESIDENT
            if slot == NOT_RESIDENT:
                placement.streamed.append(x)
                continue
            self._place(cache, x, slot)
            self.hooks["insert"](self.state, cache, x, r, upcoming, True)
            placement.loads.append((x, slot))
        for x in wanted:
            self.guarded[cache, x] = False
        self.clock += 1
        self.hits += placement.hits
        self.misses += placement.misses
        self.streamed += len(placement.streamed)
        return placement

    def prefetch(self, cache: int, experts: list[int], guard: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        """Load `experts` (best first) into `cache` after the request just served; returns the (expert,
        slot) loads. `guard` (in one pool: that request's need-set) is not evicted meanwhile."""
        r = self.clock - 1
        never = 1 << 62  # a prefetch's next need is unknown (no policy that knows the future prefetches)
        protected = {*experts, *guard}
        for x in protected:
            self.guarded[cache, x] = True
        loads = []
        for x in experts:
            if x in self.slot_of[cache]:
                continue
            slot = self._slot_for(cache, x)
            if slot == NOT_RESIDENT:
                break
            self._place(cache, x, slot)
            self.hooks["insert"](self.state, cache, x, r, never, False)
            self.prefetched[cache].add(x)
            loads.append((x, slot))
        for x in protected:
            self.guarded[cache, x] = False
        self.prefetch_loads += len(loads)
        return loads

    def finish(self) -> None:
        """The end of the stream: prefetched experts never used are wasted."""
        for unused in self.prefetched:
            self.wasted_prefetches += len(unused)
            unused.clear()

    def _slot_for(self, cache: int, x: int) -> int:
        """A free slot, or the slot of the policy's victim (evicted now); −1 when every resident is guarded."""
        if self.count[cache] < self.capacity:
            self.count[cache] += 1
            return self.count[cache] - 1
        if self.policy.ranked:
            free = [int(y) for y in self.residents[cache] if not self.guarded[cache, y]]
            victim = min(free, key=lambda y: self.hooks["key"](self.state, cache, y)) if free else NOT_RESIDENT
        else:
            victim = int(self.hooks["victim"](self.state, cache, x, self.guarded, self.residents[cache], self.capacity))
        if victim == NOT_RESIDENT:
            return NOT_RESIDENT
        assert victim in self.slot_of[cache] and not self.guarded[cache, victim], f"{self.policy.name}: bad victim"
        self.hooks["evict"](self.state, cache, victim)
        if victim in self.prefetched[cache]:
            self.prefetched[cache].discard(victim)
            self.wasted_prefetches += 1
        return self.slot_of[cache].pop(victim)

    def _place(self, cache: int, x: int, slot: int) -> None:
        self.residents[cache, slot] = x
        self.slot_of[cache][x] = slot

    def check(self) -> None:
        """Every slot holds at most one expert and every resident one slot (no leaks)."""
        for cache, slots in enumerate(self.slot_of):
            held = [int(x) for x in self.residents[cache, : self.count[cache]]]
            assert len(held) == len(set(held)) == len(slots) <= self.capacity, "slot bookkeeping broken"
            assert all(held[s] == x for x, s in slots.items()), "slot bookkeeping broken"


Requests = list[tuple[int, list[int]]]
"""(cache, need-set) per request, in replay order."""
Prefetches = dict[int, tuple[int, list[int]]]
"""After request r: (cache, experts best first) to load."""


def replay(requests: Requests, capacity: int, policy: str, *, warm_share: float = 0.2) -> tuple[int, int]:
    """(hits, misses) of `policy` over `requests` with `capacity` slots per cache."""
    counts = replay_counts(requests, capacity, policy, warm_share=warm_share)
    return counts.hits, counts.misses


def replay_counts(
    requests: Requests,
    capacity: int,
    policy: str,
    *,
    prefetch: Prefetches | None = None,
    transfer_s: float = 0.0,
    layer_s: float = 0.0,
    warm_share: float = 0.2,
) -> Counts:
    """Every count and the timeline of `policy` over `requests` (one cache per distinct cache id)."""
    chosen = get_policy(policy)
    n_caches = 1 + max([c for c, _ in requests] + [c for c, _ in (prefetch or {}).values()], default=0)
    n_ids = 1 + max([x for _, need in requests for x in need] + [x for _, xs in (prefetch or {}).values() for x in xs],
                    default=0)  # fmt: skip
    warm = warm_needs(requests, n_caches, n_ids, warm_share) if chosen.knows == "warmup" else None
    upcoming = next_needs(requests) if chosen.knows == "future" else None
    cache = ReferenceCache(chosen, capacity, n_caches, n_ids, warm)
    now = copy_free = stall = 0.0
    ready: dict[tuple[int, int], float] = {}
    for r, (c, need) in enumerate(requests):
        starts_at = now
        for x in set(need):
            if x in cache.slot_of[c]:
                starts_at = max(starts_at, ready.get((c, x), 0.0))  # a prefetch still in flight
        placement = cache.request(c, need, upcoming[r] if upcoming is not None else None)
        if placement.misses:
            copy_free = max(now, copy_free) + placement.misses * transfer_s
            starts_at = max(starts_at, copy_free)
        for x, _ in placement.loads:
            ready[(c, x)] = copy_free
        stall += starts_at - now
        now = starts_at
        if prefetch is not None and r in prefetch:
            target, experts = prefetch[r]
            guard = frozenset(need) if target == c else frozenset()
            for x, _ in cache.prefetch(target, experts, guard):
                copy_free = max(now, copy_free) + transfer_s
                ready[(target, x)] = copy_free
        now += layer_s
    cache.finish()
    return Counts(cache.hits, cache.misses, cache.streamed, cache.prefetch_loads, cache.useful_prefetches,
                  cache.wasted_prefetches, stall, now)  # fmt: skip


def warm_needs(requests: Requests, n_caches: int, n_ids: int, share: float) -> np.ndarray:
    """(caches, ids): how often each expert is needed in the first `share` of the requests (at least one)."""
    if not 0 < share < 1:
        raise InvalidArgumentError(f"the warm-up share must be in (0, 1), got {share}")
    warm = np.zeros((n_caches, n_ids), np.int64)
    for c, need in requests[: max(1, int(share * len(requests)))]:
        for x in set(need):
            warm[c, x] += 1
    return warm


def next_needs(requests: Requests) -> list[dict[int, int]]:
    """For each request, each of its experts' next request index in the same cache (never:
    len(requests) + 1)."""
    never = len(requests) + 1
    seen: dict[tuple[int, int], int] = {}
    out: list[dict[int, int]] = [{} for _ in requests]
    for r in range(len(requests) - 1, -1, -1):
        c, need = requests[r]
        for x in set(need):
            out[r][x] = seen.get((c, x), never)
            seen[(c, x)] = r
    return out

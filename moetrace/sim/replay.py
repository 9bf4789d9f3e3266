"""Replays a stream against a policy at a capacity: the Python face of the compiled engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetrace.sim.engine import compiled, next_needs
from moetrace.sim.policies import Policy, get_policy
from moetrace.sim.reference import Counts, check_capacity
from moetrace.sim.stream import Stream


@dataclass(frozen=True)
class Prefetch:
    """What to load ahead: after request r, `ids[offsets[r]:offsets[r+1]]` (experts, best first) into
    the cache of request `target[r]`'s layer (−1: nothing)."""

    target: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class CacheSpace:
    """How layers' experts map onto caches: one cache per layer, or one pool where layer position l's
    expert e is l·E + e. `simulate --pool` and `run --offload --pool` number experts the same way."""

    layers: int
    num_experts: int
    pool: bool

    @property
    def caches(self) -> int:
        return 1 if self.pool else self.layers

    @property
    def ids(self) -> int:
        """Ids per cache."""
        return self.layers * self.num_experts if self.pool else self.num_experts

    def cache(self, layer: np.ndarray | int) -> np.ndarray | int:
        """The cache of a layer position (or of an array of them)."""
        return layer * 0 if self.pool else layer

    def offset(self, layer: np.ndarray | int) -> np.ndarray | int:
        """What to add to an expert id of that layer position to get its id in its cache."""
        return layer * self.num_experts if self.pool else layer * 0

    def layout(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """(cache of each request, cache-space id of each access) of a stream (or a piece of one)."""
        layer = stream.layer.astype(np.int64)
        cache_of = np.asarray(self.cache(layer), np.int64)
        if not self.pool:
            return cache_of, stream.ids.astype(np.int64)
        request_of_access = np.repeat(np.arange(stream.requests), stream.sizes())
        return cache_of, (stream.ids + layer[request_of_access] * self.num_experts).astype(np.int64)


def cache_layout(stream: Stream, pool: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(cache of each request, cache-space id of each access, number of caches, ids per cache)."""
    space = CacheSpace(len(stream.layers), stream.num_experts, pool)
    return (*space.layout(stream), space.caches, space.ids)


def count_needs(cache_of: np.ndarray, offsets: np.ndarray, ids: np.ndarray, requests: int, into: np.ndarray) -> None:
    """Add to `into` (caches, ids) the needs of each expert in the first `requests` requests."""
    request_of_access = np.repeat(np.arange(requests), np.diff(offsets[: requests + 1]))
    np.add.at(into, (cache_of[request_of_access], ids[: offsets[requests]]), 1)


def warm_requests(share: float, requests: int) -> int:
    """How many requests a `warmup` policy learns from (reference.warm_needs)."""
    return max(1, int(share * requests))


def warm_needs(cache_of: np.ndarray, offsets: np.ndarray, ids: np.ndarray, n_caches: int, n_ids: int,
               share: float) -> np.ndarray:  # fmt: skip
    """(caches, ids): needs of each expert in the first `share` of the requests (reference.warm_needs)."""
    warm = np.zeros((n_caches, n_ids), np.int64)
    count_needs(cache_of, offsets, ids, warm_requests(share, len(cache_of)), warm)
    return warm


def replay(
    stream: Stream,
    policy: str | Policy,
    capacity: int,
    *,
    pool: bool = False,
    prefetch: Prefetch | None = None,
    transfer_s: float = 0.0,
    layer_s: float = 0.0,
    warm_share: float = 0.2,
) -> Counts:
    """Hits, misses, prefetch accounting and timeline of `policy` with `capacity` slots per layer
    (or in one pool for all layers)."""
    chosen = get_policy(policy) if isinstance(policy, str) else policy
    cache_of, ids, n_caches, n_ids = cache_layout(stream, pool)
    check_capacity(capacity, stream.top_k, n_ids)
    return replay_arrays(chosen, capacity, cache_of, stream.offsets, ids, n_caches, n_ids,
                         prefetch=prefetch_space(stream, prefetch, cache_of, pool), transfer_s=transfer_s,
                         layer_s=layer_s, warm_share=warm_share)  # fmt: skip


def replay_arrays(
    policy: Policy,
    capacity: int,
    cache_of: np.ndarray,
    offsets: np.ndarray,
    ids: np.ndarray,
    n_caches: int,
    n_ids: int,
    *,
    prefetch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    transfer_s: float = 0.0,
    layer_s: float = 0.0,
    warm_share: float = 0.2,
) -> Counts:
    """The engine over flat arrays in cache space; `prefetch` = (target cache per request, offsets, ids)."""
    upcoming = next_needs(cache_of, offsets, ids, n_caches, n_ids) if policy.knows == "future" else None
    warm = warm_needs(cache_of, offsets, ids, n_caches, n_ids, warm_share) if policy.knows == "warmup" else None
    run = Replay(policy, capacity, n_caches, n_ids, warm=warm, transfer_s=transfer_s, layer_s=layer_s,
                 never=len(cache_of) + 1)  # fmt: skip
    run.feed(cache_of, offsets, ids, upcoming=upcoming, prefetch=prefetch)
    return run.counts()


class Replay:
    """One policy at one capacity, fed a stream chunk by chunk: the counts equal one long replay, and
    memory is the caches' tables plus one chunk."""

    def __init__(
        self,
        policy: Policy,
        capacity: int,
        n_caches: int,
        n_ids: int,
        *,
        warm: np.ndarray | None = None,
        transfer_s: float = 0.0,
        layer_s: float = 0.0,
        never: int = 2**40,
    ) -> None:
        if policy.knows == "warmup" and warm is None:
            raise ValueError(f"policy {policy.name} learns from a warm-up share: give `warm`")
        self.policy = policy
        self.capacity = int(capacity)
        self.kernel = compiled(policy.name)
        self.state = policy.state(n_caches, n_ids, capacity, warm)
        self.never = int(never)
        """The request index that stands for "never needed again" (all requests + 1)."""
        self.timing = (float(transfer_s), float(layer_s))
        self.requests = 0
        self.prefetching = False
        """A prefetch has been planned: from then on the kernel tracks what prefetches did."""
        self.slot = np.full((n_caches, n_ids), -1, np.int64)
        self.residents = np.full((n_caches, capacity), -1, np.int64)
        self.rank = np.full((n_caches, capacity), np.iinfo(np.int64).max, np.int64)
        self.count = np.zeros(n_caches, np.int64)
        self.guarded = np.zeros((n_caches, n_ids), np.bool_)
        self.prefetched = np.zeros((n_caches, n_ids), np.bool_)
        self.ready = np.zeros((n_caches, n_ids), np.float64)
        self.totals = np.zeros(6, np.int64)
        self.clock = np.zeros(3, np.float64)

    def feed(
        self,
        cache_of: np.ndarray,
        offsets: np.ndarray,
        ids: np.ndarray,
        *,
        upcoming: np.ndarray | None = None,
        prefetch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Replay the next requests (offsets from 0 within the chunk); `upcoming` holds each access's next
        need as a request index over the whole stream (policies that know the future)."""
        requests = len(cache_of)
        if self.policy.knows == "future" and upcoming is None:
            raise ValueError(f"policy {self.policy.name} knows the future: give `upcoming`")
        if upcoming is None:
            upcoming = _NO_FUTURE
        if prefetch is None:
            prefetch = (_NO_TARGETS, _NO_OFFSETS, _NO_FUTURE)
        self.prefetching = self.prefetching or len(prefetch[2]) > 0
        arrays = (np.asarray(cache_of, np.int64), np.asarray(offsets, np.int64), np.asarray(ids, np.int64))
        self.kernel(self.state, *arrays, upcoming, *prefetch, self.prefetching, self.requests, self.never, self.capacity, *self.timing,
                    self.slot, self.residents, self.rank, self.count, self.guarded, self.prefetched, self.ready,
                    self.totals, self.clock)  # fmt: skip
        self.requests += requests

    def counts(self) -> Counts:
        """The counts so far; a prefetch still resident and never used counts as wasted."""
        unused = sum(int(self.prefetched[c, self.residents[c, : self.count[c]]].sum()) for c in range(len(self.count)))
        hits, misses, streamed, pf_loads, useful, wasted = (int(v) for v in self.totals)
        now, _, stall = (float(v) for v in self.clock)
        return Counts(hits, misses, streamed, pf_loads, useful, wasted + unused, stall, now)


_NO_FUTURE = np.zeros(0, np.int64)
_NO_TARGETS = np.full(0, -1, np.int64)
_NO_OFFSETS = np.zeros(1, np.int64)


def prefetch_space(
    stream: Stream, prefetch: Prefetch | None, cache_of: np.ndarray, pool: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A prefetch plan in cache space: (target cache per request, offsets, cache-space ids)."""
    if prefetch is None:
        return None
    target_cache = np.where(prefetch.target >= 0, cache_of[np.clip(prefetch.target, 0, None)], -1).astype(np.int64)
    pf_ids = prefetch.ids.astype(np.int64)
    if pool and len(pf_ids):
        owner = np.repeat(np.arange(stream.requests), np.diff(prefetch.offsets))
        pf_ids = stream.layer[prefetch.target[owner]] * stream.num_experts + pf_ids
    return target_cache, prefetch.offsets.astype(np.int64), pf_ids.astype(np.int64)

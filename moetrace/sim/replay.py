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


def cache_layout(stream: Stream, pool: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(cache of each request, cache-space id of each access, number of caches, ids per cache)."""
    space = CacheSpace(len(stream.layers), stream.num_experts, pool)
    layer = stream.layer.astype(np.int64)
    request_of_access = np.repeat(np.arange(stream.requests), stream.sizes())
    ids = stream.ids + np.asarray(space.offset(layer))[request_of_access]
    return np.asarray(space.cache(layer), np.int64), ids.astype(np.int64), space.caches, space.ids


def warm_needs(cache_of: np.ndarray, offsets: np.ndarray, ids: np.ndarray, n_caches: int, n_ids: int,
               share: float) -> np.ndarray:  # fmt: skip
    """(caches, ids): needs of each expert in the first `share` of the requests (reference.warm_needs)."""
    requests = max(1, int(share * len(cache_of)))
    cut = offsets[requests]
    request_of_access = np.repeat(np.arange(requests), np.diff(offsets[: requests + 1]))
    warm = np.zeros((n_caches, n_ids), np.int64)
    np.add.at(warm, (cache_of[request_of_access], ids[:cut]), 1)
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
                         prefetch=_prefetch_space(stream, prefetch, cache_of, pool), transfer_s=transfer_s,
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
    requests = len(cache_of)
    upcoming = (
        next_needs(cache_of, offsets, ids, n_caches, n_ids)
        if policy.knows == "future"
        else np.zeros(len(ids), np.int64)
    )
    warm = warm_needs(cache_of, offsets, ids, n_caches, n_ids, warm_share) if policy.knows == "warmup" else None
    if prefetch is None:
        prefetch = (np.full(requests, -1, np.int64), np.zeros(requests + 1, np.int64), np.zeros(0, np.int64))
    state = policy.state(n_caches, n_ids, capacity, warm)
    arrays = (cache_of, offsets, ids, upcoming, *prefetch)
    sizes = (n_caches, n_ids, int(capacity), float(transfer_s), float(layer_s))
    result = compiled(policy.name)(policy.ranked, state, *arrays, *sizes)
    return Counts(*result)


def _prefetch_space(
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

"""Replays a stream against a policy at a capacity: the Python face of the compiled engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.sim.engine import Counts, _replay, next_needs
from moetrace.sim.policies import get_policy
from moetrace.sim.stream import Stream


@dataclass(frozen=True)
class Prefetch:
    """What to load ahead: after request r, `ids[offsets[r]:offsets[r+1]]` (experts, best first) into
    the cache of request `target[r]`'s layer (−1: nothing)."""

    target: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray


def cache_layout(stream: Stream, pool: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(cache of each request, cache-space id of each access, number of caches, ids per cache)."""
    if pool:
        request_of_access = np.repeat(np.arange(stream.requests), stream.sizes())
        ids = stream.layer[request_of_access] * stream.num_experts + stream.ids
        return np.zeros(stream.requests, np.int64), ids, 1, len(stream.layers) * stream.num_experts
    return stream.layer.astype(np.int64), stream.ids, len(stream.layers), stream.num_experts


def replay(
    stream: Stream,
    policy: str,
    capacity: int,
    *,
    pool: bool = False,
    prefetch: Prefetch | None = None,
    transfer_s: float = 0.0,
    layer_s: float = 0.0,
) -> Counts:
    """Hits, misses, prefetch accounting and timeline of `policy` with `capacity` slots per layer
    (or in one pool for all layers)."""
    chosen = get_policy(policy)
    if capacity < stream.top_k:
        raise InvalidArgumentError(
            f"capacity {capacity} is smaller than top-k ({stream.top_k}): a token's experts must fit"
        )
    cache_of, ids, n_caches, n_ids = cache_layout(stream, pool)
    upcoming = (
        next_needs(cache_of, stream.offsets, ids, n_caches, n_ids)
        if chosen.needs_future
        else np.zeros(len(ids), np.int64)
    )
    if prefetch is None:
        prefetch = Prefetch(
            np.full(stream.requests, -1, np.int64), np.zeros(stream.requests + 1, np.int64), np.zeros(0, np.int64)
        )
    pf_cache = np.where(prefetch.target >= 0, cache_of[np.clip(prefetch.target, 0, None)], -1)
    pf_ids = prefetch.ids
    if pool and len(pf_ids):
        owner = np.repeat(np.arange(stream.requests), np.diff(prefetch.offsets))
        pf_ids = stream.layer[prefetch.target[owner]] * stream.num_experts + pf_ids
    result = _replay(
        chosen.key, cache_of, stream.offsets, ids, upcoming, pf_cache, prefetch.offsets, pf_ids.astype(np.int64),
        n_caches, n_ids, int(capacity), float(transfer_s), float(layer_s),
    )  # fmt: skip
    return Counts(*result)

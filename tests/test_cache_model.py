"""One cache model: the compiled engine is the reference cache's twin, for every registered policy,
per layer and pooled, with and without prefetching; the registry is the one source of policy names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moetrace.errors import InvalidArgumentError
from moetrace.offload.cache import SlotCache
from moetrace.sim import reference
from moetrace.sim.policies import parse_live_policy, parse_policy, policy_names, registered
from moetrace.sim.prefetch import plan
from moetrace.sim.replay import replay, replay_arrays
from moetrace.sim.stream import Stream

POLICIES = [p.name for p in registered()]


@st.composite
def request_streams(draw):  # type: ignore[no-untyped-def]
    """Random requests over a few caches, need-sets of 1 … k distinct ids, and random prefetch lists."""
    caches = draw(st.integers(1, 3))
    ids = draw(st.integers(2, 12))
    k = draw(st.integers(1, min(3, ids)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    skew = rng.dirichlet(np.full(ids, 0.4))
    requests = []
    for _ in range(draw(st.integers(1, 70))):
        size = int(rng.integers(1, k + 1))
        requests.append((int(rng.integers(caches)), sorted(rng.choice(ids, size, replace=False, p=skew).tolist())))
    prefetch = {}
    for r in range(len(requests)):
        if rng.random() < 0.4:
            wanted = rng.choice(ids, int(rng.integers(1, k + 2)) if k + 1 <= ids else 1, replace=False)
            prefetch[r] = (int(rng.integers(caches)), [int(x) for x in wanted])
    capacity = draw(st.integers(k, ids))
    return requests, prefetch, caches, ids, capacity


def engine(policy: str, requests, prefetch, caches: int, ids: int, capacity: int, **timing) -> reference.Counts:  # type: ignore[no-untyped-def]
    """The compiled engine over the same requests, flattened."""
    cache_of = np.array([c for c, _ in requests], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(n) for _, n in requests])]).astype(np.int64)
    flat = np.array([x for _, n in requests for x in n], np.int64)
    plan_arrays = None
    if prefetch is not None:
        target = np.array([prefetch[r][0] if r in prefetch else -1 for r in range(len(requests))], np.int64)
        lists = [prefetch[r][1] if r in prefetch else [] for r in range(len(requests))]
        pf_offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        plan_arrays = (target, pf_offsets, np.array([x for xs in lists for x in xs], np.int64))
    return replay_arrays(parse_policy(policy).policy, capacity, cache_of, offsets, flat, caches, ids,
                         prefetch=plan_arrays, **timing)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(request_streams())
def test_engine_equals_reference_for_every_policy(case) -> None:  # type: ignore[no-untyped-def]
    requests, prefetch, caches, ids, capacity = case
    for policy in POLICIES:
        plans = [None, prefetch] if parse_policy(policy).policy.prefetchable else [None]
        for pf in plans:
            want = reference.replay_counts(requests, capacity, policy, prefetch=pf, transfer_s=1.0, layer_s=0.5)
            got = engine(policy, requests, pf, caches, ids, capacity, transfer_s=1.0, layer_s=0.5)
            assert got == pytest.approx(want), (policy, pf is not None)
            assert want.hits + want.misses == sum(len(n) for _, n in requests)


@st.composite
def layer_streams(draw):  # type: ignore[no-untyped-def]
    """Token-order streams of a model with a few MoE layers: every need-set has exactly k experts."""
    experts = draw(st.integers(3, 10))
    k = draw(st.integers(1, min(3, experts)))
    layers = draw(st.integers(2, 3))
    tokens = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = np.concatenate([np.sort(rng.choice(experts, k, replace=False)) for _ in range(tokens * layers)])
    keys = np.stack([np.zeros(tokens, np.int64), np.zeros(tokens, np.int64), np.arange(tokens)], axis=1)
    return Stream(np.tile(np.arange(layers), tokens), np.arange(tokens * layers + 1) * k, ids.astype(np.int64),
                  np.repeat(np.arange(tokens), layers), keys, tuple(range(layers)), experts, k, tokens, "token")  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(layer_streams(), st.booleans(), st.data())
def test_replay_per_layer_and_pooled_equals_reference(stream, pool, data) -> None:  # type: ignore[no-untyped-def]
    """The stream's layers numbered into caches by hand (a pool: layer l's expert e is l·E + e)."""
    E = stream.num_experts
    requests = []
    for r in range(stream.requests):
        layer = int(stream.layer[r])
        need = stream.ids[stream.offsets[r] : stream.offsets[r + 1]].tolist()
        requests.append((0, [layer * E + e for e in need]) if pool else (layer, need))
    oracle = plan(stream, "oracle")
    prefetch = {}
    for r in range(stream.requests):
        if oracle.target[r] >= 0:
            target_layer = int(stream.layer[oracle.target[r]])
            experts = oracle.ids[oracle.offsets[r] : oracle.offsets[r + 1]].tolist()
            prefetch[r] = (0, [target_layer * E + e for e in experts]) if pool else (target_layer, experts)
    limit = len(stream.layers) * E if pool else E
    capacity = data.draw(st.integers(stream.top_k, limit))
    for policy in POLICIES:
        want = reference.replay_counts(requests, capacity, policy)
        assert replay(stream, policy, capacity, pool=pool) == want, policy
        if parse_policy(policy).policy.prefetchable:
            got = replay(stream, policy, capacity, pool=pool, prefetch=oracle)
            assert got == reference.replay_counts(requests, capacity, policy, prefetch=prefetch), policy


def test_live_cache_is_the_reference_with_slots() -> None:
    """SlotCache serves live requests with the reference's decisions and keeps slots consistent."""
    rng = np.random.default_rng(3)
    requests = [(int(rng.integers(2)), sorted(rng.choice(8, 2, replace=False).tolist())) for _ in range(300)]
    for policy in [p.name for p in registered() if p.live]:
        live = SlotCache(policy, 3, 2, 8)
        hits = misses = 0
        for c, need in requests:
            placement = live.request(c, need)
            hits, misses = hits + placement.hits, misses + placement.misses
            loaded = dict(placement.loads)
            assert all(live.slot_of[c][x] == s for x, s in loaded.items())
            assert set(need) == set(placement.streamed) | {x for x in need if x in live.slot_of[c]}
            live.check()
        assert (hits, misses) == reference.replay(requests, 3, policy), policy


def test_registry_is_the_one_source() -> None:
    names = policy_names()
    for policy in registered():
        assert policy.name in names and policy.doc, policy.name
        assert policy.bound == (policy.knows == "future")
    assert "all" in names and "lru+oracle" in names and "lru+markov" in names
    assert parse_policy("lru+oracle").bound and not parse_policy("lru+pregate").bound
    assert parse_policy("belady").bound and not parse_policy("lru").bound
    with pytest.raises(InvalidArgumentError, match="a live cache cannot run 'belady'"):
        parse_live_policy("belady")
    with pytest.raises(InvalidArgumentError, match="a live cache cannot run 'static'"):
        parse_live_policy("static")
    with pytest.raises(InvalidArgumentError, match="prefetches from the future"):
        parse_live_policy("lru+oracle")
    with pytest.raises(InvalidArgumentError, match="static takes no prefetch source"):
        parse_policy("static+markov")


def test_static_keeps_the_warm_up_share_s_hottest_experts() -> None:
    """By hand: the first 2 of 10 requests (share 0.2) need 5 twice and 7 once; at capacity 2 both are
    kept, each loaded at its first need and a hit after; expert 1, needed only later, always streams."""
    requests = [(0, [5, 7]), (0, [5])] + [(0, [5, 1])] * 4 + [(0, [7])] * 4
    counts = reference.replay_counts(requests, 2, "static")
    assert (counts.hits, counts.misses, counts.streamed) == (1 + 4 + 4, 2 + 4, 4)
    assert engine("static", requests, None, 1, 8, 2) == counts

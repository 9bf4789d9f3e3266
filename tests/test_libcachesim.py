"""moetrace's lru, fifo, belady, s3fifo, sieve and arc give libCacheSim's hits, exactly.

On single-expert need-sets (a plain id sequence per layer, each layer its own cache of `capacity`
experts), `moetrace.sim.reference.replay` must count the hits that libCacheSim's own policies count
(`libcachesim` binding, default parameters; the rules: docs/policies-libcachesim.md), on random
streams and on a top-1 stream of real routing. Capacities that libCacheSim refuses are skipped with
the reason.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("libcachesim")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from libcachesim_oracle import POLICIES, libcachesim_hit_flags, libcachesim_hits, refusal  # noqa: E402

from moetrace.sim.reference import replay  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROUTES = SHARED_DATA / "dsv2-lite-prefill-routes.parquet"

CAPACITIES = (2, 3, 4, 8, 16, 20, 24)
"""S3-FIFO needs 20 (a small queue of two objects): 20 and 24 are its cases on ids < 32."""
DATA_CAPACITIES = (4, 16, 20, 32)
DATA_LAYERS = (1, 13, 26)
DATA_TOKENS = 4000
"""The first tokens in (seq_id, pos) order: keeps the real-data cases to a few seconds."""

Requests = list[tuple[int, list[int]]]


def cases(capacities: tuple[int, ...]) -> list:  # type: ignore[type-arg]
    out = []
    for policy in POLICIES:
        for capacity in capacities:
            reason = refusal(policy, capacity)
            marks = [pytest.mark.skip(reason=f"libCacheSim refuses it: {reason}")] if reason else []
            out.append(pytest.param(policy, capacity, marks=marks, id=f"{policy}-{capacity}"))
    return out


def per_layer(requests: Requests) -> dict[int, list[int]]:
    streams: dict[int, list[int]] = {}
    for layer, (x,) in requests:
        streams.setdefault(layer, []).append(x)
    return streams


def moetrace_hit_flags(policy: str, requests: Requests, capacity: int) -> list[bool]:
    """Request by request, whether moetrace's reference cache hits (as `replay` drives it)."""
    from moetrace.sim.policies import get_policy
    from moetrace.sim.reference import ReferenceCache, next_needs

    chosen = get_policy(policy)
    n_caches = 1 + max(c for c, _ in requests)
    n_ids = 1 + max(x for _, need in requests for x in need)
    cache = ReferenceCache(chosen, capacity, n_caches, n_ids, None)
    upcoming = next_needs(requests) if chosen.knows == "future" else None
    return [
        cache.request(c, need, upcoming[r] if upcoming is not None else None).hits > 0
        for r, (c, need) in enumerate(requests)
    ]


def first_divergence(policy: str, requests: Requests, capacity: int) -> str:
    """Where moetrace and libCacheSim first disagree, layer by layer (for the failure message)."""
    try:
        out = []
        for layer, ids in sorted(per_layer(requests).items()):
            theirs = libcachesim_hit_flags(policy, ids, capacity)
            ours = moetrace_hit_flags(policy, [(0, [x]) for x in ids], capacity)
            k = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
            if k is not None:
                word = {True: "hit", False: "miss"}
                out.append(
                    f"layer {layer}: first at its request #{k} (id {ids[k]}): libCacheSim {word[theirs[k]]}, "
                    f"moetrace {word[ours[k]]}; its ids up to there: {ids[max(0, k - 40) : k + 1]}"
                )
        return "\n".join(out) or "no request-level divergence found"
    except Exception as e:  # the diagnosis must not hide the mismatch
        return f"(could not locate the divergence: {e!r})"


def check_against_libcachesim(policy: str, requests: Requests, capacity: int) -> None:
    expected = sum(libcachesim_hits(policy, ids, capacity) for ids in per_layer(requests).values())
    hits, misses = replay(requests, capacity, policy)
    assert hits + misses == len(requests)
    if hits != expected:
        pytest.fail(
            f"{policy}, capacity {capacity}: moetrace {hits} hits, libCacheSim {expected}\n"
            + first_divergence(policy, requests, capacity)
        )


random_requests = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 31)), min_size=1, max_size=300).map(
    lambda pairs: [(layer, [x]) for layer, x in pairs]
)


@pytest.mark.parametrize(("policy", "capacity"), cases(CAPACITIES))
@settings(max_examples=15, deadline=None)
@given(requests=random_requests)
def test_random_streams_give_libcachesims_hits(policy: str, capacity: int, requests: Requests) -> None:
    check_against_libcachesim(policy, requests, capacity)


@pytest.fixture(scope="module")
def top1_requests() -> Requests:
    """The first expert of each row, layers DATA_LAYERS, the first DATA_TOKENS tokens, token order."""
    if not ROUTES.exists():
        pytest.skip(f"no shared routing data at {SHARED_DATA}")
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(
        ROUTES, columns=["seq_id", "pos", "layer", "experts"], filters=[("layer", "in", list(DATA_LAYERS))]
    )
    seq, pos, layer = (table[name].to_numpy() for name in ("seq_id", "pos", "layer"))
    first = pc.list_element(table["experts"], 0).to_numpy()
    order = np.lexsort((layer, pos, seq))
    seq, pos, layer, first = seq[order], pos[order], layer[order], first[order]
    token = np.cumsum(np.r_[True, (seq[1:] != seq[:-1]) | (pos[1:] != pos[:-1])]) - 1
    keep = token < DATA_TOKENS
    return [(int(c), [int(x)]) for c, x in zip(layer[keep], first[keep])]


@pytest.mark.parametrize(("policy", "capacity"), cases(DATA_CAPACITIES))
def test_real_top1_stream_gives_libcachesims_hits(policy: str, capacity: int, top1_requests: Requests) -> None:
    check_against_libcachesim(policy, top1_requests, capacity)


def test_oracle_fast_path_matches_request_by_request() -> None:
    """The oracle's one-trace-file replay gives the hits of libCacheSim driven one request at a time."""
    rng = random.Random(7)
    for _ in range(5):
        ids = [rng.randrange(32) for _ in range(rng.randrange(1, 400))]
        for policy in POLICIES:
            for capacity in (3, 20):
                if refusal(policy, capacity) is None:
                    assert libcachesim_hits(policy, ids, capacity) == sum(
                        libcachesim_hit_flags(policy, ids, capacity)
                    ), (policy, capacity)

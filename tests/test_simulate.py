"""`moetrace simulate`: exact counts against a brute force, invariants, prefetching, cost model, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_one_error_line, run

import moetrace
from moetrace.errors import InvalidArgumentError
from moetrace.sim import reference
from moetrace.sim.prefetch import plan
from moetrace.sim.replay import replay
from moetrace.sim.simulate import SimConfig, lru_curve, simulate
from moetrace.sim.stream import Stream, build_stream

GOLDEN = Path(__file__).resolve().parents[1] / "traces" / "golden" / "demo-generate"

# hits at capacity 2, 4 and 8 of the golden trace (3,676 accesses in step order, 13,832 in token order)
GOLDEN_HITS = {
    "step": {
        "lru": (1125, 1886, 2975),
        "fifo": (1125, 1884, 2889),
        "lfu": (1125, 1899, 3008),
        "belady": (1125, 1908, 3107),
    },
    "token": {
        "lru": (6064, 9412, 12410),
        "fifo": (6064, 8910, 11948),
        "lfu": (6064, 9732, 12722),
        "belady": (6064, 10749, 13052),
    },
}


def brute_force(requests: list[tuple[int, list[int]]], capacity: int, policy: str) -> tuple[int, int]:
    """The replay semantics, written from DESIGN.md again with lists and forward scans."""
    caches: dict[int, list[int]] = {}
    history: list[tuple[int, int, int, int]] = []  # (request, cache, expert, event) events: 0 inserted, 1 used
    hits = misses = 0
    for r, (cache_id, need) in enumerate(requests):
        cache = caches.setdefault(cache_id, [])
        need = sorted(set(need))
        hits += sum(e in cache for e in need)
        misses += sum(e not in cache for e in need)
        for e in need:
            if e in cache:
                continue
            if len(cache) == capacity:
                candidates = [v for v in cache if v not in need]
                if not candidates:
                    continue
                cache.remove(min(candidates, key=lambda v: score(v, r, cache_id, policy, requests, history)))
            cache.append(e)
            history.append((r, cache_id, e, 0))
        history.extend((r, cache_id, e, 1) for e in need)
    return hits, misses


def score(v: int, r: int, cache_id: int, policy: str, requests: list, history: list) -> tuple:
    uses = [t for (t, c, e, kind) in history if c == cache_id and e == v and kind == 1]
    if policy == "lru":
        return (max(uses), v)
    if policy == "fifo":
        return (max(t for (t, c, e, kind) in history if c == cache_id and e == v and kind == 0), v)
    if policy == "lfu":
        return (len(uses), max(uses), v)
    following = [t for t in range(r + 1, len(requests)) if requests[t][0] == cache_id and v in requests[t][1]]
    return (-(following[0] if following else float("inf")), v)


def as_requests(stream: Stream) -> list[tuple[int, list[int]]]:
    return [
        (int(stream.layer[r]), stream.ids[stream.offsets[r] : stream.offsets[r + 1]].tolist())
        for r in range(stream.requests)
    ]


@pytest.mark.parametrize("order", ["step", "token"])
def test_golden_counts_match_a_brute_force(order) -> None:  # type: ignore[no-untyped-def]
    stream = build_stream(moetrace.open_trace(GOLDEN), order)
    requests = as_requests(stream)
    short = requests[:400]  # the brute force is quadratic: check it on a prefix, the golden numbers on all
    for policy, golden in GOLDEN_HITS[order].items():
        for capacity, hits in zip((2, 4, 8), golden):
            counts = replay(stream, policy, capacity)
            assert (counts.hits, counts.hits + counts.misses) == (hits, stream.accesses), (policy, capacity)
            assert (counts.hits, counts.misses) == reference.replay(requests, capacity, policy)
            prefix = Stream(stream.layer[:400], stream.offsets[:401], stream.ids[: stream.offsets[400]], stream.unit[:400],
                            stream.unit_keys, stream.layers, stream.num_experts, stream.top_k, stream.tokens, order)  # fmt: skip
            got = replay(prefix, policy, capacity)
            assert (got.hits, got.misses) == brute_force(short, capacity, policy), (policy, capacity)


@st.composite
def streams(draw):  # type: ignore[no-untyped-def]
    """Random token-order-like streams: every need-set has exactly k experts."""
    experts = draw(st.integers(4, 12))
    k = draw(st.integers(1, 3))
    layers = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    skew = rng.dirichlet(np.full(experts, 0.5))
    ids = np.concatenate([np.sort(rng.choice(experts, k, replace=False, p=skew)) for _ in range(tokens * layers)])
    layer = np.tile(np.arange(layers), tokens)
    unit = np.repeat(np.arange(tokens), layers)
    keys = np.stack([np.zeros(tokens, np.int64), np.zeros(tokens, np.int64), np.arange(tokens)], axis=1)
    return Stream(layer, np.arange(tokens * layers + 1) * k, ids.astype(np.int64), unit, keys, tuple(range(layers)),
                  experts, k, tokens, "token")  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(streams())
def test_invariants(stream) -> None:  # type: ignore[no-untyped-def]
    capacities = range(stream.top_k, stream.num_experts + 1)
    hits = {p: [replay(stream, p, c).hits for c in capacities] for p in ("lru", "fifo", "lfu", "belady")}
    for policy in ("lru", "fifo", "lfu"):
        assert all(b >= h for b, h in zip(hits["belady"], hits[policy]))
    for policy in ("lru", "fifo", "lfu", "belady"):
        for capacity in capacities:
            counts = replay(stream, policy, capacity)
            assert counts.hits + counts.misses == stream.accesses
    for policy in ("lru", "belady"):
        assert hits[policy] == sorted(hits[policy])  # never falls as capacity grows
    oracle = plan(stream, "oracle", depth=1) if len(stream.layers) > 1 else None
    if oracle is not None:
        assert all(replay(stream, "lru", c, prefetch=oracle).hits >= b for c, b in zip(capacities, hits["belady"]))
    capacity_axis, rates = lru_curve(stream)
    np.testing.assert_allclose(rates, [h / stream.accesses for h in hits["lru"]][capacity_axis[0] - stream.top_k :])


def test_prefetch_accounting_and_cost_model() -> None:
    # one token, two layers, one expert each; transfers take 1 s, layers 2 s
    stream = Stream(np.array([0, 1]), np.array([0, 1, 2]), np.array([3, 5]), np.array([0, 0]), np.zeros((1, 3), np.int64),
                    (0, 1), 8, 1, 1, "token")  # fmt: skip
    demand = replay(stream, "lru", 1, transfer_s=1.0, layer_s=2.0)
    assert (demand.hits, demand.misses, demand.stall_s, demand.total_s) == (0, 2, 2.0, 6.0)
    ahead = replay(stream, "lru", 1, prefetch=plan(stream, "oracle"), transfer_s=1.0, layer_s=2.0)
    # layer 0 waits 1 s for its expert; layer 1's arrives during layer 0's compute: no second stall
    assert (ahead.hits, ahead.misses, ahead.prefetch_loads, ahead.useful_prefetches) == (1, 1, 1, 1)
    assert (ahead.stall_s, ahead.total_s) == (1.0, 5.0)
    wrong = plan(stream, "oracle")
    wrong = type(wrong)(wrong.target, wrong.offsets, np.array([6]))
    missed = replay(stream, "lru", 1, prefetch=wrong)
    assert (missed.prefetch_loads, missed.useful_prefetches, missed.wasted_prefetches) == (1, 0, 1)


def test_simulate_sweep_reports_every_policy_and_capacity() -> None:
    trace = moetrace.open_trace(GOLDEN)
    result = simulate(
        trace, SimConfig(policies=("lru", "belady", "static", "lru+oracle"), capacities=(4, 8), layer_time=1e-4)
    )
    assert {(r["policy"], r["capacity"]) for r in result.results} == {
        (p, c) for p in ("lru", "belady", "static", "lru+oracle") for c in (4, 8)
    }
    for r in result.results:
        assert r["hits"] + r["misses"] == r["accesses"] == 3676
        assert r["bytes"] == r["loads"] * trace.meta.model.expert_bytes
        assert r["all_in_gpu_time_per_token_s"] <= r["time_per_token_s"] <= r["no_cache_time_per_token_s"] + 1e-12
    oracle = next(r for r in result.results if r["policy"] == "lru+oracle" and r["capacity"] == 8)
    assert oracle["prefetch_accuracy"] == 1.0


def test_scheduling_groups_tokens_with_shared_routes() -> None:
    trace = moetrace.open_trace(GOLDEN)
    result = simulate(trace, SimConfig(policies=("lru",), capacities=(8,), order="token", batch_size=4))
    arrival, grouped = (next(r for r in result.scheduling if r["schedule"] == s) for s in ("arrival", "grouped"))
    assert grouped["forwards"] == arrival["forwards"]
    assert grouped["experts_per_forward_layer"] < arrival["experts_per_forward_layer"]


def test_bad_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = moetrace.open_trace(GOLDEN)
    with pytest.raises(InvalidArgumentError, match="capacity 1 is smaller than top-k"):
        simulate(trace, SimConfig(capacities=(1,)))
    with pytest.raises(InvalidArgumentError, match="--bandwidth must be positive"):
        SimConfig(bandwidth=0)
    with pytest.raises(InvalidArgumentError, match="unknown policy 'bogus'; known: .*lru.*belady"):
        SimConfig(policies=("bogus",))
    with pytest.raises(InvalidArgumentError, match="belady takes no prefetch source"):
        SimConfig(policies=("belady+oracle",))
    with pytest.raises(InvalidArgumentError, match="unknown prefetch source 'psychic'"):
        SimConfig(policies=("lru+psychic",))
    with pytest.raises(InvalidArgumentError, match="--batch-size schedules tokens"):
        SimConfig(order="step", batch_size=4)
    with pytest.raises(InvalidArgumentError, match="needs --predictor"):
        simulate(trace, SimConfig(policies=("lru+markov",)))


def test_a_predictor_for_another_model_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tiny_models import tiny_model

    from moetrace.predict.path import save_path_predictor
    from moetrace.predict.paths import make_path_predictor
    from moetrace.predict.paths.data import path_data

    other = moetrace.record(tiny_model("olmoe"), [[1, 2, 3, 4], [1, 5, 6]], tmp_path / "o", max_new_tokens=3)
    markov = make_path_predictor("markov")
    markov.fit(path_data(other), (1,))
    save_path_predictor(markov, tmp_path / "m.pt", other, (1,))
    with pytest.raises(InvalidArgumentError, match="saved for a model with 2 MoE layers × 4 experts"):
        simulate(moetrace.open_trace(GOLDEN), SimConfig(policies=("lru+markov",)), predictor=tmp_path / "m.pt")


def test_markov_prefetching_from_a_saved_predictor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = moetrace.open_trace(GOLDEN)
    result = run("predict", "path", GOLDEN, "--method", "markov", "--save", tmp_path / "m.pt", "--json")
    assert result.exit_code == 0, result.output
    sim = simulate(
        trace, SimConfig(policies=("lru", "lru+markov"), capacities=(8,), order="token"), predictor=tmp_path / "m.pt"
    )
    plain, ahead = sim.results
    assert ahead["prefetch_loads"] > 0 and 0 < ahead["prefetch_accuracy"] <= 1
    assert ahead["hit_rate"] > plain["hit_rate"]


def test_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run(
        "simulate", GOLDEN, "--policy", "lru,belady", "--capacity", "4,8", "--json", "--plot", tmp_path / "h.png"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [(r["policy"], r["capacity"], r["hits"]) for r in rows] == [
        ("lru", 4, 1886),
        ("lru", 8, 2975),
        ("belady", 4, 1908),
        ("belady", 8, 3107),
    ]
    assert {"policy", "capacity", "hits", "misses", "hit_rate", "loads", "bytes"} <= set(rows[0])
    assert (tmp_path / "h.png").exists()
    table = run("simulate", GOLDEN, "--gpu-memory", "4MiB", "--policy", "lru,lru+oracle", "--layer-time", "50us")
    assert table.exit_code == 0 and "capacity 7 per layer" in table.stdout
    assert_one_error_line(run("simulate", GOLDEN, "--capacity", 1), "smaller than top-k")
    assert_one_error_line(run("simulate", GOLDEN, "--bandwidth", "-5GB/s"), "--bandwidth")
    assert_one_error_line(run("simulate", GOLDEN, "--policy", "bogus"), "unknown policy 'bogus'")


@pytest.mark.parametrize(("order", "pool"), [("step", False), ("token", False), ("token", True)])
def test_a_streamed_replay_in_small_chunks_on_disk_counts_what_one_whole_replay_counts(
    monkeypatch, order, pool
) -> None:  # type: ignore[no-untyped-def]
    """Chunks of ~500 rows, all but the first on disk: Belady's next needs cross chunks (the reverse
    pass), static's warm-up share spans chunks, LRU's curve and the timeline carry over."""
    import moetrace.sim.chunks as chunks
    import moetrace.sim.simulate as sim

    trace = moetrace.open_trace(GOLDEN)
    config = SimConfig(policies=("lru", "fifo", "lfu", "belady", "static", "s3fifo", "arc", "lru+oracle"),
                       capacities=(3, 8), order=order, pool=pool, layer_time=1e-4, expert_bytes=10**6)  # fmt: skip
    whole = simulate(trace, config, stream=build_stream(trace, order))
    monkeypatch.setattr(sim, "CHUNK_ROWS", 500)
    monkeypatch.setattr(chunks, "KEEP_ACCESSES", 1)
    seen = []
    streamed = simulate(trace, config, progress=lambda done, total, what: seen.append(total))
    assert seen and seen[-1] > 5  # it did run in many chunks
    assert streamed.results == whole.results
    assert streamed.stream == whole.stream
    assert np.array_equal(streamed.lru_curve[1], whole.lru_curve[1])  # type: ignore[index]

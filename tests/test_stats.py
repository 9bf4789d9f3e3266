"""`trace_stats` on a hand-computed example."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pytest

from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.reader import open_trace
from moetrace.trace.stats import top_k_ids, trace_stats
from moetrace.trace.writer import TraceWriter

# (seq, pos) -> experts at layer 0 and layer 1; 4 experts, top-2
TOKENS = {
    (0, 0): ([0, 1], [2, 3]),
    (0, 1): ([1, 2], [2, 3]),
    (0, 2): ([1, 2], [0, 3]),
    (1, 0): ([0, 1], [2, 3]),
    (1, 1): ([3, 0], [1, 2]),
}


@pytest.fixture
def example(tmp_path):  # type: ignore[no-untyped-def]
    info = ModelInfo(num_experts=4, top_k=2, moe_layers=(0, 1))
    with TraceWriter(tmp_path / "t", TraceMeta.new(info, {"mode": "generate"})) as writer:
        for step, ((seq, pos), (first, second)) in enumerate(TOKENS.items()):
            writer.write_routes(
                seq_id=np.array([seq, seq]), pos=np.array([pos, pos]), step=step, phase="prefill",
                layer=np.array([0, 1]), experts=np.array([first, second]),
            )  # fmt: skip
    return open_trace(tmp_path / "t")


def test_load_balance_by_hand(example) -> None:  # type: ignore[no-untyped-def]
    stats = trace_stats(example)
    assert (stats.sequences, stats.tokens, stats.steps) == (2, 5, 5)
    first = stats.layers[0]  # counts per expert: 3, 4, 2, 1
    assert first.routings == 10
    assert first.imbalance == pytest.approx(4 / 2.5)
    assert first.cv == pytest.approx(math.sqrt(1.25) / 2.5)
    shares = np.array([0.3, 0.4, 0.2, 0.1])
    assert first.entropy == pytest.approx(-(shares * np.log(shares)).sum() / math.log(4))
    assert first.top10_share == pytest.approx(0.4)  # the busiest tenth of 4 experts is one expert
    assert first.hottest[0] == (1, pytest.approx(0.4))


def test_temporal_locality_by_hand(example) -> None:  # type: ignore[no-untyped-def]
    stats = trace_stats(example)
    # layer 0: {0,1}->{1,2} shares 1, {1,2}->{1,2} shares 2, {0,1}->{3,0} shares 1: 4 of 6
    assert stats.layers[0].temporal_locality == pytest.approx(4 / 6)
    # layer 1: {2,3}->{2,3} 2, {2,3}->{0,3} 1, {2,3}->{1,2} 1
    assert stats.layers[1].temporal_locality == pytest.approx(4 / 6)
    assert stats.temporal_locality == pytest.approx(8 / 12)


def test_inter_layer_predictability_by_hand(example) -> None:  # type: ignore[no-untyped-def]
    stats = trace_stats(example)
    # co-occurrence rows (layer 0 expert -> layer 1 counts): 0:[0,1,3,2] 1:[1,0,3,4] 2:[1,0,1,2] 3:[0,1,1,0]
    # predictions: {2,3} {2,3} {2,3} {2,3} {1,2} against {2,3} {2,3} {0,3} {2,3} {1,2}: 9 hits of 10
    assert stats.layers[0].next_layer_recall == pytest.approx(0.9)
    # popularity predicts layer 1's two busiest experts {2,3}: 2+2+1+2+1 = 8 of 10
    assert stats.layers[0].next_layer_popularity_recall == pytest.approx(0.8)
    assert stats.layers[1].next_layer_recall is None
    assert stats.inter_layer_predictability == pytest.approx(0.9)


def test_top_k_ids_breaks_ties_towards_the_smaller_index() -> None:
    scores = np.array([[0, 2, 4, 2], [5, 5, 5, 5]])
    assert sorted(top_k_ids(scores, 2)[0]) == [1, 2]
    assert sorted(top_k_ids(scores, 3)[1]) == [0, 1, 2]
    floats = np.array([[0.0, 2.0, 4.0, 2.0]])
    assert sorted(top_k_ids(floats, 2)[0]) == [1, 2]


# -- the numbers against a brute-force computation ---------------------------------------------


def random_trace(path, tokens: int, seed: int, num_experts: int = 6, top_k: int = 2, with_load: bool = False):  # type: ignore[no-untyped-def]
    """A random generation trace over MoE layers (0, 2, 5): a few sequences with gaps in their
    positions, some tokens absent at some layers, written in several parts."""
    rng = np.random.default_rng(seed)
    layers = (0, 2, 5)
    info = ModelInfo(num_experts=num_experts, top_k=top_k, moe_layers=layers)
    rows = []
    for _ in range(tokens):
        seq, pos = int(rng.integers(0, 4)), int(rng.integers(0, tokens))
        for layer in layers:
            if rng.random() < 0.9:
                rows.append((seq, pos, layer, rng.choice(num_experts, top_k, replace=False)))
    unique = {(s, p, layer): e for s, p, layer, e in rows}  # one row per (token, layer)
    with TraceWriter(path, TraceMeta.new(info, {"mode": "generate"}), flush_rows=50) as writer:
        for step, ((seq, pos, layer), experts) in enumerate(sorted(unique.items())):
            writer.write_routes(
                seq_id=np.array([seq]), pos=np.array([pos]), step=step % 7, phase="prefill",
                layer=np.array([layer]), experts=experts[None, :],
            )  # fmt: skip
            if with_load:
                writer.write_load(step=step % 7, phase="prefill", layer=np.full(top_k, layer), expert=experts,
                                  tokens=np.ones(top_k, np.int64))  # fmt: skip
    return open_trace(path), unique


def brute_force(unique, layers, num_experts: int, k: int):  # type: ignore[no-untyped-def]
    """Imbalance, temporal locality and co-occurrence recall by plain loops, from the definitions."""
    out = {"imbalance": [], "locality": [], "recall": [], "popularity": []}
    for layer in layers:
        counts = [0] * num_experts
        for (_, _, la), experts in unique.items():
            if la == layer:
                for e in experts:
                    counts[e] += 1
        out["imbalance"].append(max(counts) / (sum(counts) / num_experts))
        shared = pairs = 0
        for (s, p, la), experts in unique.items():
            following = unique.get((s, p + 1, la))
            if la == layer and following is not None:
                shared += len(set(experts) & set(following))
                pairs += 1
        out["locality"].append((shared, pairs))
    for layer, nxt in zip(layers, layers[1:]):
        matched = [
            (e, unique[(s, p, nxt)]) for (s, p, la), e in unique.items() if la == layer and (s, p, nxt) in unique
        ]
        table = [[0] * num_experts for _ in range(num_experts)]
        for src, dst in matched:
            for e in src:
                for f in dst:
                    table[e][f] += 1
        popularity = [0] * num_experts
        for _, dst in matched:
            for f in dst:
                popularity[f] += 1
        popular = sorted(range(num_experts), key=lambda g: (-popularity[g], g))[:k]
        hits = popular_hits = 0
        for src, dst in matched:
            scores = [sum(table[e][g] for e in src) for g in range(num_experts)]
            predicted = sorted(range(num_experts), key=lambda g: (-scores[g], g))[:k]
            hits += len(set(predicted) & set(dst))
            popular_hits += sum(f in popular for f in dst)
        out["recall"].append((hits, len(matched)))
        out["popularity"].append((popular_hits, len(matched)))
    return out


@pytest.mark.parametrize(
    ("seed", "num_experts", "top_k", "with_load"), [(0, 6, 2, False), (1, 5, 3, True), (2, 9, 4, False)]
)
def test_stats_equal_a_brute_force_computation(tmp_path, seed, num_experts, top_k, with_load) -> None:  # type: ignore[no-untyped-def]
    trace, unique = random_trace(tmp_path / "t", 150, seed, num_experts, top_k, with_load)
    assert bool(trace.load_parts) == with_load and len(trace.route_parts) > 2
    stats = trace_stats(trace)
    want = brute_force(unique, trace.meta.model.moe_layers, num_experts, top_k)
    assert stats.tokens == len({(s, p) for s, p, _ in unique})
    for i, layer in enumerate(stats.layers):
        assert layer.imbalance == pytest.approx(want["imbalance"][i])
        shared, pairs = want["locality"][i]
        assert layer.temporal_locality == (pytest.approx(shared / (top_k * pairs)) if pairs else None)
    for i, ((hits, n), (popular_hits, _)) in enumerate(zip(want["recall"], want["popularity"])):
        assert stats.layers[i].next_layer_recall == pytest.approx(hits / (top_k * n))
        assert stats.layers[i].next_layer_popularity_recall == pytest.approx(popular_hits / (top_k * n))
    total_hits, total_n = (sum(x) for x in zip(*want["recall"]))
    assert stats.inter_layer_predictability == pytest.approx(total_hits / (top_k * total_n))
    assert stats.inter_layer_popularity == pytest.approx(sum(h for h, _ in want["popularity"]) / (top_k * total_n))
    shared, pairs = (sum(x) for x in zip(*want["locality"]))
    assert stats.temporal_locality == pytest.approx(shared / (top_k * pairs))


# -- memory does not grow with the trace ----------------------------------------------------------

_PEAK = """
import resource, sys
from moetrace.trace.reader import open_trace
from moetrace.trace.stats import trace_stats
trace_stats(open_trace(sys.argv[1]))
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _uniform_trace(path, tokens: int, layers: int = 8, num_experts: int = 64, top_k: int = 8) -> None:  # type: ignore[no-untyped-def]
    """A route table of random top-k choices written as one Parquet part, with a minimal meta.json."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (path / "routes").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = tokens * layers
    experts = np.argpartition(rng.random((rows, num_experts), np.float32), top_k, axis=1)[:, :top_k]
    token = np.repeat(np.arange(tokens), layers)
    table = pa.table(
        {
            "seq_id": (token // 500).astype(np.int32), "pos": (token % 500).astype(np.int32),
            "step": (token // 50).astype(np.int32), "phase": pa.array(["prefill"] * rows).dictionary_encode(),
            "layer": np.tile(np.arange(layers), tokens).astype(np.int16),
            "experts": pa.FixedSizeListArray.from_arrays(pa.array(experts.reshape(-1).astype(np.int16)), top_k),
        }
    )  # fmt: skip
    pq.write_table(table, path / "routes" / "part-00000.parquet")
    model = {"num_experts": num_experts, "top_k": top_k, "moe_layers": list(range(layers))}
    (path / "meta.json").write_text(json.dumps({"schema_version": 1, "complete": True, "model": model}))


def test_peak_memory_of_trace_stats_does_not_grow_with_the_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Peak RSS of `trace_stats` in a fresh process on 12k tokens and on 4× as many (96k and 384k rows).

    The peak is the process's own high-water mark (VmHWM; ru_maxrss where /proc is absent): on Linux
    ru_maxrss keeps the parent's size across fork and exec, so a large test runner would hide the
    child's own. Materialising the routes (the implementation before DuckDB) grew 1.6-1.7× here."""
    import subprocess
    import sys

    peaks = []
    for name, tokens in (("small", 12_000), ("large", 48_000)):
        _uniform_trace(tmp_path / name, tokens)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, str(tmp_path / name)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks.append(int(done.stdout.split()[-1]))
    assert peaks[1] <= 1.3 * peaks[0], f"peak RSS {peaks[0] / 1024:.0f} MiB -> {peaks[1] / 1024:.0f} MiB"


def test_stats_do_not_depend_on_batch_and_buffer_sizes(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Tiny batches, pair buffers and reads: tokens span batches, buffers flush and grow mid-batch."""
    from moetrace.trace import stats

    trace, _ = random_trace(tmp_path / "t", 150, 3, 7, 3)
    want = trace_stats(trace).to_dict()
    monkeypatch.setattr(stats, "_BATCH_ROWS", 5)
    monkeypatch.setattr(stats, "_PAIRS_PER_LAYER", 1)
    monkeypatch.setattr(stats, "_READ_PAIRS", 3)
    assert trace_stats(trace).to_dict() == want


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer": 9}, "layer(s) [9] are not in meta.json's moe_layers"),
        ({"expert": 64}, "routes name an expert outside 0..63"),
        ({"expert": -1}, "routes name an expert outside 0..63"),
    ],
)
def test_bad_routes_are_one_clear_error(tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    """One bad row in the middle of the routes; a valid load part, so that the load summary passes."""
    import pyarrow.parquet as pq

    from moetrace.errors import TraceFormatError

    _uniform_trace(tmp_path / "t", 2_000)
    (tmp_path / "t" / "load").mkdir()
    load = {"step": pa.array([0], pa.int32()), "phase": pa.array(["prefill"]), "layer": pa.array([0], pa.int16()),
            "expert": pa.array([0], pa.int16()), "tokens": pa.array([1], pa.int32())}  # fmt: skip
    pq.write_table(pa.table(load), tmp_path / "t" / "load" / "part-00000.parquet")
    part = tmp_path / "t" / "routes" / "part-00000.parquet"
    table = pq.read_table(part)
    layer = table["layer"].to_numpy().copy()
    experts = np.asarray(table["experts"].combine_chunks().flatten()).reshape(len(table), -1).copy()
    row = len(table) // 2 + 3
    layer[row] = change.get("layer", layer[row])
    experts[row, 1] = change.get("expert", experts[row, 1])
    table = table.set_column(table.schema.get_field_index("layer"), "layer", pa.array(layer))
    flat = pa.FixedSizeListArray.from_arrays(pa.array(experts.reshape(-1)), experts.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index("experts"), "experts", flat), part)
    with pytest.raises(TraceFormatError, match=re.escape(message)):
        trace_stats(open_trace(tmp_path / "t"))

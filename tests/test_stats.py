"""`trace_stats` on a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
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

"""Trace format v1: writer/reader round trips, foreign and damaged traces."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moetrace.errors import OutputExistsError, TraceFormatError, TraceNotFoundError
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.reader import IncompleteTraceWarning, open_trace
from moetrace.trace.schema import SCHEMA_VERSION
from moetrace.trace.writer import TraceWriter


@st.composite
def random_trace(draw):  # type: ignore[no-untyped-def]
    num_experts = draw(st.integers(2, 40))
    top_k = draw(st.integers(1, min(num_experts, 6)))
    layers = tuple(sorted(draw(st.sets(st.integers(0, 30), min_size=1, max_size=4))))
    steps = draw(st.integers(1, 6))
    forwards = []
    for step in range(steps):
        tokens = draw(st.integers(0, 20))
        phase = draw(st.sampled_from(["prefill", "decode", "train"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        experts = (
            np.stack([rng.permutation(num_experts)[:top_k] for _ in range(tokens * len(layers))])
            if tokens
            else np.zeros((0, top_k), int)
        )
        forwards.append(
            {
                "step": step,
                "phase": phase,
                "seq_id": np.tile(rng.integers(0, 5, tokens), len(layers)).astype(np.int32),
                "pos": np.tile(np.arange(tokens), len(layers)).astype(np.int32),
                "layer": np.repeat(np.array(layers), tokens).astype(np.int16),
                "token_id": rng.integers(0, 50_000, tokens * len(layers)).astype(np.int32),
                "experts": experts.astype(np.int16),
                "weights": rng.random((tokens * len(layers), top_k)).astype(np.float32),
            }
        )
    flush_rows = draw(st.integers(1, 50))
    with_weights = draw(st.booleans())
    return ModelInfo(num_experts=num_experts, top_k=top_k, moe_layers=layers), forwards, flush_rows, with_weights


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_trace())
def test_write_read_round_trip(tmp_path_factory, case) -> None:  # type: ignore[no-untyped-def]
    info, forwards, flush_rows, with_weights = case
    out = tmp_path_factory.mktemp("t") / "trace"
    with TraceWriter(out, TraceMeta.new(info, {"mode": "generate"}), flush_rows=flush_rows) as writer:
        for f in forwards:
            writer.write_routes(
                seq_id=f["seq_id"],
                pos=f["pos"],
                step=f["step"],
                phase=f["phase"],
                layer=f["layer"],
                token_id=f["token_id"],
                experts=f["experts"],
                weights=f["weights"] if with_weights else None,
            )
    trace = open_trace(out)
    assert trace.meta.complete and trace.meta.model == info
    got = trace.routes_arrays()
    rows = sum(len(f["seq_id"]) for f in forwards)
    assert len(got["seq_id"]) == rows
    for name in ("seq_id", "pos", "layer", "token_id", "experts"):
        want = np.concatenate([f[name] for f in forwards]) if rows else np.zeros((0,))
        np.testing.assert_array_equal(got[name].reshape(want.shape), want)
    want_phase = np.concatenate([[f["phase"]] * len(f["seq_id"]) for f in forwards]) if rows else []
    assert list(got["phase"]) == list(want_phase)
    if with_weights and rows:
        np.testing.assert_array_equal(got["weights"], np.concatenate([f["weights"] for f in forwards]))
    else:
        assert trace.routes(["weights"]).column("weights").null_count == rows
    # no load parts were written: load is derived from the routes and agrees with them
    dense = trace.dense_load()
    assert dense.tokens.sum() == rows * info.top_k


def _write_minimal(tmp_path, meta: dict, table: pa.Table):  # type: ignore[no-untyped-def]
    trace = tmp_path / "foreign"
    (trace / "routes").mkdir(parents=True)
    (trace / "meta.json").write_text(json.dumps(meta))
    pq.write_table(table, trace / "routes" / "part-00000.parquet")
    return trace


def _foreign_table(**overrides) -> pa.Table:  # type: ignore[no-untyped-def]
    columns = {
        "seq_id": pa.array([0, 0, 1], pa.int64()),
        "pos": pa.array([0, 1, 0], pa.int64()),
        "step": pa.array([0, 0, 1], pa.int64()),
        "phase": pa.array(["prefill", "prefill", "decode"]),
        "layer": pa.array([3, 3, 3], pa.int64()),
        "experts": pa.array([[1, 0], [2, 1], [0, 3]], pa.list_(pa.int64())),
        "my_tool_score": pa.array([0.5, 0.1, 0.2]),
    }
    columns.update(overrides)
    return pa.table(columns)


MINIMAL_META = {"schema_version": 1, "model": {"num_experts": 4, "top_k": 2, "moe_layers": [3]}}


def test_minimal_foreign_trace_reads_and_ignores_unknown_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = open_trace(_write_minimal(tmp_path, MINIMAL_META, _foreign_table()))
    table = trace.routes()
    assert "my_tool_score" not in table.column_names
    assert table.schema.field("experts").type == pa.list_(pa.int16(), 2)
    assert table.schema.field("seq_id").type == pa.int32()
    dense = trace.dense_load()
    np.testing.assert_array_equal(dense.steps, [0, 1])
    np.testing.assert_array_equal(dense.tokens[:, 0, :], [[1, 2, 1, 0], [1, 0, 0, 1]])
    assert list(dense.phases) == ["prefill", "decode"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"seq_id": pa.array(["a", "b", "c"])}, "column 'seq_id' has type string, expected integer"),
        ({"experts": pa.array(["1 0", "2 1", "0 3"])}, "column 'experts' has type string, expected list of integers"),
        ({"layer": pa.array([0.0, 1.0, 2.0])}, "column 'layer' has type double, expected integer"),
    ],
)
def test_wrong_type_is_named(tmp_path, override, message) -> None:  # type: ignore[no-untyped-def]
    trace = _write_minimal(tmp_path, MINIMAL_META, _foreign_table(**override))
    with pytest.raises(TraceFormatError, match=message):
        open_trace(trace).routes()


def test_missing_required_column_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = _foreign_table().drop_columns(["pos"])
    with pytest.raises(TraceFormatError, match="required column 'pos'"):
        open_trace(_write_minimal(tmp_path, MINIMAL_META, table))


def test_expert_lists_of_the_wrong_length_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    experts = pa.array([[1, 0], [2, 1, 3], [0, 3]], pa.list_(pa.int64()))
    with pytest.raises(TraceFormatError, match="not top_k = 2"):
        open_trace(_write_minimal(tmp_path, MINIMAL_META, _foreign_table(experts=experts))).routes()


def test_layer_outside_meta_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _write_minimal(tmp_path, MINIMAL_META, _foreign_table(layer=pa.array([3, 5, 3])))
    with pytest.raises(TraceFormatError, match=r"layer\(s\) \[5\] are not in meta.json's moe_layers \[3\]"):
        open_trace(trace).dense_load()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"model": {"num_experts": 4, "top_k": 2, "moe_layers": [3]}}, "no 'schema_version'"),
        ({"schema_version": SCHEMA_VERSION + 1, "model": MINIMAL_META["model"]}, "upgrade"),
        ({"schema_version": 1, "model": {"num_experts": 4, "moe_layers": [3]}}, "no 'top_k'"),
        (
            {"schema_version": 1, "model": {"num_experts": 4, "top_k": 5, "moe_layers": [3]}},
            "top_k must be in 1..num_experts",
        ),
        ({"schema_version": 1, "model": {"num_experts": "4", "top_k": 2, "moe_layers": [3]}}, "must hold integers"),
    ],
)
def test_bad_meta_is_named(tmp_path, meta, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TraceFormatError, match=message):
        open_trace(_write_minimal(tmp_path, meta, _foreign_table()))


def test_meta_that_is_not_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _write_minimal(tmp_path, MINIMAL_META, _foreign_table())
    (trace / "meta.json").write_text("{not json")
    with pytest.raises(TraceFormatError, match="not valid JSON"):
        open_trace(trace)


def test_corrupt_part_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _write_minimal(tmp_path, MINIMAL_META, _foreign_table())
    (trace / "routes" / "part-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TraceFormatError, match="part-00000.parquet is not a readable Parquet file"):
        open_trace(trace)


def test_not_a_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TraceNotFoundError, match="does not exist"):
        open_trace(tmp_path / "absent")
    with pytest.raises(TraceFormatError, match="has no meta.json"):
        open_trace(tmp_path)
    table = tmp_path / "routes.parquet"
    pq.write_table(_foreign_table(), table)
    with pytest.raises(TraceFormatError, match="moetrace import"):
        open_trace(table)


def test_incomplete_trace_reads_complete_parts_with_a_warning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = ModelInfo(num_experts=4, top_k=2, moe_layers=(0,))
    writer = TraceWriter(tmp_path / "t", TraceMeta.new(info, {}), flush_rows=2)
    for step in range(3):
        writer.write_routes(
            seq_id=np.array([0, 0]),
            pos=np.array([0, 1]) + 2 * step,
            step=step,
            phase="decode",
            layer=np.array([0, 0]),
            experts=np.array([[0, 1], [2, 3]]),
        )
    # the process dies here: no close(); a half-written part lies under its temporary name
    (tmp_path / "t" / "routes" / ".part-00003.parquet.tmp").write_bytes(b"half a part")
    with pytest.warns(IncompleteTraceWarning, match="incomplete"):
        trace = open_trace(tmp_path / "t")
    assert not trace.meta.complete
    assert len(trace.routes()) == 6


def test_writer_refuses_existing_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = ModelInfo(num_experts=4, top_k=2, moe_layers=(0,))
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="pass --force"):
        TraceWriter(tmp_path, TraceMeta.new(info, {}))
    with pytest.raises(OutputExistsError, match="not a moetrace trace"):
        TraceWriter(tmp_path, TraceMeta.new(info, {}), force=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_force_replaces_a_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = ModelInfo(num_experts=4, top_k=2, moe_layers=(0,))
    with TraceWriter(tmp_path / "t", TraceMeta.new(info, {"run": 1})) as writer:
        writer.write_routes(
            seq_id=np.array([0]),
            pos=np.array([0]),
            step=0,
            phase="prefill",
            layer=np.array([0]),
            experts=np.array([[0, 1]]),
        )
    with TraceWriter(tmp_path / "t", TraceMeta.new(info, {"run": 2}), force=True):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = open_trace(tmp_path / "t")
    assert trace.meta.run["run"] == 2 and len(trace.routes()) == 0

"""SQL over a trace: the `routes` and `load` views (moetrace.trace.query) and `moetrace query`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from moetrace.cli.app import app
from moetrace.errors import QueryError, TraceFormatError, TraceNotFoundError
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.query import connect, query, query_batches
from moetrace.trace.reader import open_trace
from moetrace.trace.writer import TraceWriter

INFO = ModelInfo(num_experts=4, top_k=2, moe_layers=(1, 3))


def routes_trace(path: Path) -> Path:
    """Two steps of two tokens at two layers, written by the writer (canonical parts)."""
    with TraceWriter(path, TraceMeta.new(INFO, {"mode": "generate"})) as writer:
        writer.write_routes(
            seq_id=np.array([0, 0, 1, 1]), pos=np.array([0, 0, 0, 0]), step=0, phase="prefill",
            layer=np.array([1, 3, 1, 3]), experts=np.array([[0, 1], [2, 3], [1, 2], [3, 0]]),
            weights=np.full((4, 2), 0.5, np.float16), token_id=np.array([5, 5, 6, 6]),
        )  # fmt: skip
        writer.write_routes(
            seq_id=np.array([0, 0]), pos=np.array([1, 1]), step=1, phase="decode",
            layer=np.array([1, 3]), experts=np.array([[1, 0], [2, 0]]),
            weights=np.full((2, 2), 0.5, np.float16), token_id=np.array([7, 7]),
        )  # fmt: skip
    return path


def load_only_trace(path: Path) -> Path:
    with TraceWriter(path, TraceMeta.new(INFO, {"mode": "train"})) as writer:
        writer.write_load(
            step=0, phase="train", layer=np.array([1, 3]), expert=np.array([0, 2]), tokens=np.array([4, 6])
        )
        writer.write_load(step=1, phase="train", layer=np.array([1]), expert=np.array([3]), tokens=np.array([9]))
    return path


def test_routes_view_holds_the_route_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = open_trace(routes_trace(tmp_path / "t"))
    got = query(trace, "SELECT * FROM routes ORDER BY step, seq_id, pos, layer")
    assert got.column_names == ["seq_id", "pos", "step", "phase", "layer", "token_id", "experts", "weights"]
    assert got.column("phase").to_pylist() == ["prefill"] * 4 + ["decode"] * 2
    assert got.column("layer").to_pylist() == [1, 3, 1, 3, 1, 3]
    assert got.column("experts").to_pylist() == [[0, 1], [2, 3], [1, 2], [3, 0], [1, 0], [2, 0]]
    assert got.column("token_id").to_pylist() == [5, 5, 6, 6, 7, 7]
    assert got.schema.field("experts").type == pa.list_(pa.int16())


def test_load_view_is_derived_from_routes_without_load_parts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = open_trace(routes_trace(tmp_path / "t"))
    assert trace.load_parts == []
    got = query(trace, "SELECT step, layer, expert, tokens FROM load ORDER BY ALL")
    rows = list(zip(*(got.column(c).to_pylist() for c in got.column_names)))
    # step 0 layer 1: experts 0,1 and 1,2; layer 3: 2,3 and 3,0; step 1: layer 1 {1,0}, layer 3 {2,0}
    assert rows == [
        (0, 1, 0, 1), (0, 1, 1, 2), (0, 1, 2, 1), (0, 3, 0, 1), (0, 3, 2, 1), (0, 3, 3, 2),
        (1, 1, 0, 1), (1, 1, 1, 1), (1, 3, 0, 1), (1, 3, 2, 1),
    ]  # fmt: skip


def test_load_only_trace_has_load_and_a_clear_error_for_routes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = load_only_trace(tmp_path / "t")
    got = query(path, "SELECT sum(tokens) AS n, count(*) AS rows FROM load")
    assert got.to_pylist() == [{"n": 19, "rows": 3}]
    with pytest.raises(QueryError, match=r"^bad SQL: Catalog Error: .*routes.*load only"):
        query(path, "SELECT count(*) FROM routes")


def test_empty_trace_has_empty_views(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with TraceWriter(tmp_path / "t", TraceMeta.new(INFO, {"mode": "generate"})):
        pass
    assert query(tmp_path / "t", "SELECT count(*) AS n FROM routes").to_pylist() == [{"n": 0}]
    assert query(tmp_path / "t", "SELECT count(*) AS n FROM load").to_pylist() == [{"n": 0}]


def test_parts_that_differ_are_read_by_name_and_cast(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A foreign second part: plain-string phase, variable-size int32 lists, int64 ids, float32
    weights, no token_id, a `token` column and an unknown column."""
    path = routes_trace(tmp_path / "t")
    foreign = pa.table(
        {
            "seq_id": pa.array([2, 2], pa.int64()),
            "pos": pa.array([0, 0], pa.int64()),
            "step": pa.array([2, 2], pa.int64()),
            "phase": ["prefill", "prefill"],
            "layer": pa.array([1, 3], pa.int64()),
            "experts": pa.array([[3, 2], [1, 0]], pa.list_(pa.int32())),
            "weights": pa.array([[0.25, 0.75], [0.5, 0.5]], pa.list_(pa.float32())),
            "token": ["Hi", "Hi"],
            "someone_elses": [1.5, 2.5],
        }
    )
    pq.write_table(foreign, path / "routes" / "part-00001.parquet")
    con = connect(path)
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE routes)").fetchall())
    assert types == {
        "seq_id": "INTEGER", "pos": "INTEGER", "step": "INTEGER", "phase": "VARCHAR", "layer": "SMALLINT",
        "token_id": "INTEGER", "experts": "SMALLINT[]", "weights": "FLOAT[]", "token": "VARCHAR",
    }  # fmt: skip
    rows = con.sql("SELECT experts, weights, token, token_id FROM routes WHERE step = 2 ORDER BY layer").fetchall()
    assert rows == [([3, 2], [0.25, 0.75], "Hi", None), ([1, 0], [0.5, 0.5], "Hi", None)]
    assert con.sql("SELECT sum(tokens) FROM load").fetchall() == [(16,)]  # 8 rows × top-2
    first = con.sql("SELECT weights FROM routes WHERE step = 0 LIMIT 1").fetchall()
    assert first == [([0.5, 0.5],)]  # float16 on disk
    con.close()


def test_a_part_of_the_wrong_kind_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = routes_trace(tmp_path / "t")
    bad = pa.table({"seq_id": [0], "pos": [0], "step": [0], "phase": ["prefill"], "layer": [1], "experts": ["0 1"]})
    pq.write_table(bad, path / "routes" / "part-00001.parquet")
    with pytest.raises(TraceFormatError, match="part-00001.parquet: column 'experts' has type string"):
        query(path, "SELECT 1")


def test_bad_sql_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = routes_trace(tmp_path / "t")
    with pytest.raises(QueryError) as caught:
        query(path, "SELEC * FROM routes")
    assert str(caught.value) == 'bad SQL: Parser Error: syntax error at or near "SELEC"'
    with pytest.raises(QueryError, match=r'^bad SQL: Binder Error: Referenced column "nope" not found'):
        query(path, "SELECT nope FROM routes")
    with pytest.raises(QueryError, match="empty"):
        query(path, "  ")
    with pytest.raises(TraceNotFoundError):
        query(tmp_path / "absent", "SELECT 1")


def test_query_batches_streams(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = routes_trace(tmp_path / "t")
    reader = query_batches(path, "SELECT * FROM routes", batch_rows=4)
    assert sum(batch.num_rows for batch in reader) == 6
    with pytest.raises(QueryError, match="Conversion Error"):
        query_batches(path, "SELECT phase::INTEGER FROM routes").read_all()


# -- moetrace query -----------------------------------------------------------------------------

runner = CliRunner()


def test_cli_csv_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = routes_trace(tmp_path / "t")
    sql = "SELECT layer, count(*) AS n FROM routes GROUP BY layer ORDER BY layer"
    result = runner.invoke(app, ["query", str(path), sql, "--csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["layer,n", "1,3", "3,3"]
    result = runner.invoke(app, ["query", str(path), sql, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"layer": 1, "n": 3}, {"layer": 3, "n": 3}]


def test_cli_table_and_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = routes_trace(tmp_path / "t")
    result = runner.invoke(
        app, ["query", str(path), "SELECT * FROM routes ORDER BY step, seq_id, layer", "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "experts" in result.stdout and "[0, 1]" in result.stdout
    assert "first 2 of 6 rows" in result.stdout


def test_cli_load_only_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = load_only_trace(tmp_path / "t")
    result = runner.invoke(app, ["query", str(path), "SELECT sum(tokens) AS n FROM load", "--csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n", "19"]


@pytest.mark.parametrize(
    ("make", "sql", "message"),
    [
        (routes_trace, "SELEC * FROM routes", 'bad SQL: Parser Error: syntax error at or near "SELEC"'),
        (load_only_trace, "SELECT * FROM routes", "load only"),
        (None, "SELECT 1", "does not exist"),
        (lambda p: p.mkdir() or p, "SELECT 1", "is not a moetrace trace"),
    ],
)
def test_cli_errors_are_one_red_line(tmp_path, make, sql, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t"
    if make is not None:
        make(path)
    result = runner.invoke(app, ["query", str(path), sql])
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

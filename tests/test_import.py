"""`moetrace import`: generic route tables into traces."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DSV2_ROUTES

from moetrace.errors import InvalidArgumentError, OutputExistsError, TraceFormatError
from moetrace.trace.importer import import_routes

CSV = """seq_id,pos,layer,experts,weights,token
7,0,2,"[3, 1]","[0.6, 0.4]",Hello
7,0,5,"[0, 2]","[0.5, 0.5]",Hello
7,1,2,"[1, 4]","[0.7, 0.3]",world
7,1,5,"[2, 0]","[0.9, 0.1]",world
3,0,2,"[4, 3]","[0.8, 0.2]",Hi
3,0,5,"[1, 2]","[0.6, 0.4]",Hi
"""


def test_csv_route_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.csv"
    src.write_text(CSV)
    trace = import_routes(src, tmp_path / "t")
    meta = trace.meta
    assert (meta.model.num_experts, meta.model.top_k, meta.model.moe_layers) == (5, 2, (2, 5))
    assert meta.run["mode"] == "import" and meta.complete
    routes = trace.routes_arrays()
    # each sequence is one prefill step, in seq_id order: sequence 3 first
    assert list(routes["seq_id"]) == [3, 3, 7, 7, 7, 7]
    assert list(routes["step"]) == [0, 0, 1, 1, 1, 1]
    assert set(routes["phase"]) == {"prefill"}
    np.testing.assert_array_equal(routes["experts"][2], [3, 1])  # rank order kept
    np.testing.assert_allclose(routes["weights"][2], [0.6, 0.4], rtol=1e-6)
    assert list(routes["token"][:3]) == ["Hi", "Hi", "Hello"]
    dense = trace.dense_load()
    np.testing.assert_array_equal(dense.tokens[1, 0], [0, 2, 0, 1, 1])  # step 1, layer 2: experts 3,1,1,4


def test_parquet_table_with_space_separated_lists_and_given_num_experts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.parquet"
    pq.write_table(
        pa.table({"seq_id": [0, 0], "pos": [0, 1], "layer": [0, 0], "experts": ["2 1", "0 2"], "token_id": [11, 12]}),
        src,
    )
    trace = import_routes(src, tmp_path / "t", num_experts=8, model_name="my-model")
    assert trace.meta.model.num_experts == 8 and trace.meta.model.name == "my-model"
    np.testing.assert_array_equal(trace.routes_arrays()["token_id"], [11, 12])


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        ({"seq_id": [0], "pos": [0], "experts": [[1, 2]]}, TraceFormatError, "no column 'layer'"),
        ({"seq_id": [0], "pos": [0], "layer": [0], "experts": ["a b"]}, TraceFormatError, "not a list of numbers"),
        (
            {"seq_id": [0, 0], "pos": [0, 1], "layer": [0, 0], "experts": [[1, 2], [1, 2, 3]]},
            TraceFormatError,
            "different lengths \\(2 to 3\\)",
        ),
        ({"seq_id": [0], "pos": [0], "layer": [0], "experts": [[1, -2]]}, TraceFormatError, "negative"),
        ({"seq_id": ["x"], "pos": [0], "layer": [0], "experts": [[1, 2]]}, TraceFormatError, "'seq_id' .* integer"),
    ],
)
def test_bad_tables_are_named(tmp_path, table, error, message) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.parquet"
    pq.write_table(pa.table(table), src)
    with pytest.raises(error, match=message):
        import_routes(src, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_num_experts_smaller_than_the_data_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.csv"
    src.write_text(CSV)
    with pytest.raises(InvalidArgumentError, match="--num-experts 3 is too small"):
        import_routes(src, tmp_path / "t", num_experts=3)


def test_existing_output_is_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.csv"
    src.write_text(CSV)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        import_routes(src, tmp_path / "t")
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine"


def test_other_formats_and_missing_files_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="does not exist"):
        import_routes(tmp_path / "absent.parquet", tmp_path / "t")
    (tmp_path / "routes.json").write_text("{}")
    with pytest.raises(TraceFormatError, match="expected a .parquet or .csv"):
        import_routes(tmp_path / "routes.json", tmp_path / "t")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TraceFormatError, match="not a readable parquet file"):
        import_routes(tmp_path / "broken.parquet", tmp_path / "t")


@pytest.mark.skipif(not DSV2_ROUTES.exists(), reason="../shared/data is not beside this checkout")
def test_real_deepseek_v2_lite_routing_imports_as_it_is(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = import_routes(DSV2_ROUTES, tmp_path / "dsv2")
    model = trace.meta.model
    assert (model.num_experts, model.top_k, model.moe_layers) == (64, 6, tuple(range(1, 27)))
    assert trace.meta.run["rows"] == 2_448_290 and trace.meta.run["num_sequences"] == 999
    dense = trace.dense_load()
    assert dense.tokens.shape == (999, 26, 64)
    assert dense.tokens.sum() == 2_448_290 * 6
    source = pq.read_table(DSV2_ROUTES, columns=["seq_id", "pos", "layer", "experts"]).sort_by(
        [("seq_id", "ascending"), ("pos", "ascending"), ("layer", "ascending")]
    )
    imported = trace.routes(["seq_id", "pos", "layer", "experts"])
    assert imported.column("experts").equals(source.column("experts").cast(imported.schema.field("experts").type))

"""`moetrace import` streams: its peak memory does not grow with the route table, and a table out of
trace order is sorted through bounded on-disk buckets into the trace a whole-table sort gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moetrace.trace import importer
from moetrace.trace.importer import import_routes

LAYERS, TOP_K, EXPERTS, SEQ_LEN = 4, 2, 16, 500


def write_route_table(path: Path, rows: int, seed: int = 0, chunk: int = 200_000) -> None:
    """A seeded route table of `rows` rows, written a chunk at a time: 64-bit ids, top-2 experts with
    weights (about 56 bytes a row in memory), sequences of SEQ_LEN tokens in trace order."""
    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("seq_id", pa.int64()), ("pos", pa.int64()), ("layer", pa.int64()), ("token_id", pa.int64()),
         ("experts", pa.list_(pa.int64(), TOP_K)), ("weights", pa.list_(pa.float32(), TOP_K))]
    )  # fmt: skip
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows // LAYERS, chunk // LAYERS):
            token = np.arange(start, min(rows // LAYERS, start + chunk // LAYERS))
            n = len(token) * LAYERS
            experts = (rng.integers(0, EXPERTS - 1, (n, 1)) + np.arange(TOP_K)) % EXPERTS
            columns = {
                "seq_id": np.repeat(token // SEQ_LEN, LAYERS),
                "pos": np.repeat(token % SEQ_LEN, LAYERS),
                "layer": np.tile(np.arange(LAYERS), len(token)),
                "token_id": rng.integers(0, 50_000, n),
                "experts": pa.FixedSizeListArray.from_arrays(pa.array(experts.reshape(-1)), TOP_K),
                "weights": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * TOP_K, np.float32)), TOP_K),
            }
            writer.write_table(pa.table(columns, schema=schema))


PEAK = """
import resource, sys
from moetrace.trace.importer import import_routes
trace = import_routes(sys.argv[1], sys.argv[2])
assert trace.meta.run["rows"] == int(sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kb(src: Path, out: Path, rows: int) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, str(src), str(out), str(rows)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 4× larger table (2M rows, ~110 MB held as Arrow; the whole-table import peaked at 1.8× the
    small one) imports within 1.3× the small one's peak memory, each in a fresh process."""
    small, large = 500_000, 2_000_000
    write_route_table(tmp_path / "small.parquet", small)
    write_route_table(tmp_path / "large.parquet", large, seed=1)
    peak_small = peak_rss_kb(tmp_path / "small.parquet", tmp_path / "small", small)
    peak_large = peak_rss_kb(tmp_path / "large.parquet", tmp_path / "large", large)
    assert peak_large <= 1.3 * peak_small, f"peak RSS {peak_small / 1024:.0f} MB → {peak_large / 1024:.0f} MB"


def test_a_table_out_of_order_is_sorted_in_bounded_buckets(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    write_route_table(tmp_path / "ordered.parquet", 40_000)
    table = pq.read_table(tmp_path / "ordered.parquet")
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    pq.write_table(shuffled, tmp_path / "shuffled.parquet", row_group_size=3_000)
    monkeypatch.setattr(importer, "BUCKET_ROWS", 5_000)  # about 8 buckets, read 3,000 rows at a time
    monkeypatch.setattr(importer, "BATCH_ROWS", 3_000)
    assert importer.scan_table(importer.RouteTable(tmp_path / "ordered.parquet")).ordered
    assert not importer.scan_table(importer.RouteTable(tmp_path / "shuffled.parquet")).ordered
    seen: list[tuple[int, int, str]] = []
    kept = import_routes(tmp_path / "ordered.parquet", tmp_path / "a", flush_rows=7_000)
    sorted_ = import_routes(
        tmp_path / "shuffled.parquet", tmp_path / "b", flush_rows=7_000, progress=lambda *p: seen.append(p)
    )
    assert sorted_.routes().equals(kept.routes())
    assert [pq.read_metadata(p).num_rows for p in sorted_.route_parts] == [7_000] * 5 + [5_000]
    assert [p for p in seen if p[2] == "checking"][-1] == (40_000, 40_000, "checking")
    assert [p for p in seen if p[2] == "writing"] == [(min(40_000, 7_000 * i), 40_000, "writing") for i in range(1, 7)]
    load = [t.load().sort_by([(k, "ascending") for k in ("step", "layer", "expert")]) for t in (kept, sorted_)]
    assert load[0].equals(load[1])
    assert load[1].column("tokens").to_numpy().sum() == 40_000 * TOP_K
    dense = sorted_.dense_load()
    assert dense.tokens.shape == (40_000 // LAYERS // SEQ_LEN, LAYERS, EXPERTS)


def test_a_bad_later_batch_leaves_no_trace(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An error found while writing (here a missing token_id past the first batch) removes the half-written trace."""
    monkeypatch.setattr(importer, "BATCH_ROWS", 2)
    src = tmp_path / "routes.parquet"
    pq.write_table(
        pa.table({"seq_id": [0] * 4, "pos": [0, 1, 2, 3], "layer": [0] * 4, "experts": [[1, 2]] * 4,
                  "token_id": [5, 6, None, 7]}),
        src,
    )  # fmt: skip
    with pytest.raises(Exception, match="'token_id' has missing values"):
        import_routes(src, tmp_path / "t", flush_rows=2)
    assert not (tmp_path / "t").exists()

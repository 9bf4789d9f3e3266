"""`moetrace import`: turn a generic route table (Parquet or CSV) into a trace, streaming.

The table needs `seq_id`, `pos`, `layer` and `experts` (a list of expert ids per row; in CSV a
string such as "[3, 17, 42]" or "3 17 42"), and may carry `weights`, `token_id`, `token`, `step`
and `phase`. Without `step`, each sequence is taken as one prefill forward pass, in `seq_id` order.

The table is never held in memory. A first pass reads only the key columns, batch by batch, for
what the trace's meta needs (top_k, the largest expert id, the MoE layers, the sequences) and to
learn whether the rows are already in trace order (step, seq_id, pos, layer). A second pass
converts and writes batch by batch; rows out of order are first spread over on-disk buckets of
consecutive steps, and each bucket is sorted on its own. The trace is the one a sort of the whole
table would give: the same rows in the same order, and the same load counts.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moetrace.errors import InvalidArgumentError, TraceFormatError, TraceNotFoundError
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.reader import Trace, _to_numpy, load_from_routes, open_trace
from moetrace.trace.schema import PHASES, ROUTE_COLUMNS, normalise
from moetrace.trace.writer import DEFAULT_FLUSH_ROWS, TraceWriter, check_output_dir

REQUIRED = ("seq_id", "pos", "layer", "experts")
SORT_KEYS = ("step", "seq_id", "pos", "layer")
BATCH_ROWS = 65_536
"""Rows read at a time."""
BUCKET_ROWS = 1_048_576
"""Rows of an out-of-order table sorted at a time (a bucket holds whole steps, so one larger step is one bucket)."""
LIST_COLUMNS = ("experts", "weights", "pregate_experts")
COUNT_KEYS = 1 << 22
"""Load keys (steps × phases × layers × experts) counted at a time: a bincount of 32 MB."""

#: progress(rows_done, rows_total, stage): stage "checking" (the first pass; rows_total is 0 where the
#: file does not say, as in CSV) or "writing"
Progress = Callable[[int, int, str], None]


class RouteTable:
    """A Parquet or CSV route table on disk, read a batch at a time with its list columns parsed."""

    def __init__(self, src: Path) -> None:
        if not src.exists():
            raise TraceNotFoundError(f"route table {src} does not exist")
        self.src = src
        self.kind = src.suffix.lower().lstrip(".")
        if self.kind not in ("parquet", "csv", "tsv"):
            raise TraceFormatError(f"{src}: expected a .parquet or .csv route table, got '{src.suffix}'")
        self.rows = 0
        """Rows in the table where the file says so (Parquet), else 0."""
        with _readable(self.src, self.kind):
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(src)
                self.names = parquet.schema_arrow.names
                self.rows = parquet.metadata.num_rows
            else:
                self.names = self._open_csv(None).schema.names
        missing = [c for c in REQUIRED if c not in self.names]
        if missing:
            raise TraceFormatError(f"{src}: route table has no column '{missing[0]}' (needs {', '.join(REQUIRED)})")

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The table's rows in file order, `columns` only (all when None), as tables of up to BATCH_ROWS rows."""
        columns = [c for c in (columns or self.names) if c in self.names]
        with _readable(self.src, self.kind):
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                # pre_buffer keeps every column chunk read so far until the file is closed: memory would grow
                parquet = pq.ParquetFile(self.src, pre_buffer=False)
                raw: Iterator[pa.RecordBatch] = parquet.iter_batches(BATCH_ROWS, columns=columns)
            else:
                raw = iter(self._open_csv(columns))
            for batch in raw:
                yield self._parse_lists(pa.Table.from_batches([batch]))

    def _open_csv(self, columns: list[str] | None) -> pa.RecordBatchReader:
        from pyarrow import csv

        return csv.open_csv(
            self.src,
            read_options=csv.ReadOptions(block_size=8 << 20),
            parse_options=csv.ParseOptions(delimiter="\t" if self.kind == "tsv" else ","),
            convert_options=csv.ConvertOptions(include_columns=columns),
        )

    def _parse_lists(self, table: pa.Table) -> pa.Table:
        for name in LIST_COLUMNS:
            if name in table.column_names and pa.types.is_string(table.column(name).type):
                parsed = _parse_list(table.column(name), name, self.src)
                table = table.set_column(table.column_names.index(name), name, parsed)
        return table


@contextlib.contextmanager
def _readable(src: Path, kind: str) -> Iterator[None]:
    """Turn Arrow and OS read errors into one TraceFormatError line."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFormatError(f"{src} is not a readable {kind} file: {message}") from None


class _Readable:
    """Turns Arrow and OS read errors into one TraceFormatError line."""

    def __init__(self, src: Path, kind: str) -> None:
        self.src, self.kind = src, kind

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, (pa.ArrowInvalid, OSError)) and not isinstance(exc, FileNotFoundError):
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TraceFormatError(f"{self.src} is not a readable {self.kind} file: {message}") from None


def _parse_list(column: pa.ChunkedArray, name: str, src: Path) -> pa.ChunkedArray:
    stripped = pc.utf8_trim(pc.replace_substring_regex(column, r"[\[\]()]", ""), " ")
    parts = pc.split_pattern_regex(stripped, r"[,;\s]+")
    value_type = pa.float32() if name == "weights" else pa.int64()
    try:
        return parts.cast(pa.list_(value_type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TraceFormatError(f"{src}: column '{name}' holds text that is not a list of numbers") from None


@dataclass
class TableScan:
    """What the first pass learns from a route table's key columns."""

    rows: int = 0
    widths: tuple[int, int] | None = None
    """Shortest and longest `experts` list."""
    min_expert: int = 0
    max_expert: int = -1
    layers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seq_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    step_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Distinct values of the step column (of seq_id where there is none), ascending."""
    step_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Rows per step key."""
    phases: set[str] = field(default_factory=set)
    ordered: bool = True
    """Whether the rows are already sorted by (step, seq_id, pos, layer)."""
    last_key: list[np.ndarray] | None = None


def scan_table(table: RouteTable, progress: Progress | None = None) -> TableScan:
    """First pass: read the key columns batch by batch, never the whole table; stop at the first bad value."""
    scan = TableScan()
    for batch in table.batches(["step", "seq_id", "pos", "layer", "experts", "phase"]):
        batch = normalise(batch, ROUTE_COLUMNS, None, str(table.src))
        if batch.num_rows == 0:
            continue
        scan.rows += batch.num_rows
        experts = batch.column("experts")
        width = experts.type.list_size
        low, high = scan.widths or (width, width)
        scan.widths = (min(low, width), max(high, width))
        if scan.widths[0] != scan.widths[1]:
            shortest, longest = scan.widths
            raise TraceFormatError(f"column 'experts' holds lists of different lengths ({shortest} to {longest})")
        values = pc.list_flatten(experts)
        scan.min_expert = min(scan.min_expert, int(pc.min(values).as_py() or 0))
        scan.max_expert = max(scan.max_expert, int(pc.max(values).as_py() or 0))
        if scan.min_expert < 0:
            raise TraceFormatError(f"{table.src}: column 'experts' holds negative expert ids")
        keys = [_int64(batch.column(name)) for name in SORT_KEYS if name in batch.column_names]
        scan.layers = np.union1d(scan.layers, _int64(pc.unique(batch.column("layer"))))
        scan.seq_ids = np.union1d(scan.seq_ids, _int64(pc.unique(batch.column("seq_id"))))
        steps = pc.value_counts(batch.column("step" if "step" in batch.column_names else "seq_id"))
        scan.step_keys, scan.step_rows = _add_counts(
            scan.step_keys, scan.step_rows, _int64(steps.field("values")), _int64(steps.field("counts"))
        )
        if "phase" in batch.column_names:
            scan.phases |= set(pc.unique(batch.column("phase").cast(pa.string())).to_pylist())
            bad = scan.phases - set(PHASES)
            if bad:
                expected = ", ".join(PHASES)
                raise TraceFormatError(
                    f"{table.src}: column 'phase' holds {sorted(map(str, bad))}; expected {expected}"
                )
        if scan.ordered:
            joined = keys if scan.last_key is None else [np.concatenate([a, b]) for a, b in zip(scan.last_key, keys)]
            scan.ordered = _non_decreasing(joined)
            scan.last_key = [key[-1:] for key in keys]
        if progress is not None:
            progress(scan.rows, table.rows, "checking")
    return scan


def _int64(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(), np.int64)


def _add_counts(
    keys: np.ndarray, counts: np.ndarray, new: np.ndarray, new_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts per distinct key, with `new_counts` of the keys `new` added; keys ascending."""
    merged, inverse = np.unique(np.concatenate([keys, new]), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate([counts, new_counts])).astype(np.int64)


def _non_decreasing(keys: list[np.ndarray]) -> bool:
    """Whether rows given column by column (most significant first) are in lexicographic order."""
    ok = np.ones(max(len(keys[0]) - 1, 0), bool)
    for key in reversed(keys):
        diff = np.diff(key)
        ok = (diff > 0) | ((diff == 0) & ok)
    return bool(ok.all())


def import_routes(
    src: str | Path,
    out: str | Path,
    *,
    num_experts: int | None = None,
    model_name: str | None = None,
    force: bool = False,
    flush_rows: int = DEFAULT_FLUSH_ROWS,
    progress: Progress | None = None,
) -> Trace:
    """Import the route table `src` as a trace in `out`; returns the trace opened for reading.

    Memory holds a few batches (and, for a table not in trace order, one bucket of steps), whatever
    the size of the table."""
    src, out = Path(src), Path(out)
    check_output_dir(out, force)
    table = RouteTable(src)
    first = next(table.batches(), None)  # a wrongly typed column is named before the long passes
    if first is not None:
        first = normalise(first, ROUTE_COLUMNS, None, str(src))
    scan = scan_table(table, progress)
    if first is None or scan.rows == 0 or scan.widths is None:
        raise TraceFormatError(f"{src}: route table has no rows")
    top_k = scan.widths[1]
    seen = scan.max_expert + 1
    if num_experts is None:
        num_experts = seen
    elif num_experts < seen:
        raise InvalidArgumentError(f"--num-experts {num_experts} is too small: {src} routes to expert {seen - 1}")
    if top_k > num_experts:
        raise TraceFormatError(f"{src}: rows list {top_k} experts but there are only {num_experts}")
    info = ModelInfo(
        num_experts=num_experts, top_k=top_k, moe_layers=tuple(int(x) for x in scan.layers),
        name=model_name or src.stem, model_type=None,
    )  # fmt: skip
    run = {"mode": "import", "source": str(src), "rows": scan.rows, "num_sequences": len(scan.seq_ids)}
    extra = tuple(c for c in ("pregate_experts", "token") if c in first.column_names)
    weights_type = first.schema.field("weights").type.value_type if "weights" in first.column_names else pa.float32()
    writer = TraceWriter(
        out, TraceMeta.new(info, run), weights_type=weights_type, extra_columns=extra, flush_rows=flush_rows, force=True
    )
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.import-", dir=out.parent) as spill:
            rows = _in_trace_order(table, scan, top_k, Path(spill))
            _write(writer, _slices(rows, flush_rows), scan.rows, progress)
    except BaseException:
        writer.closed = True  # nothing is kept of a failed import
        shutil.rmtree(writer.write_dir, ignore_errors=True)
        raise
    writer.close()
    return open_trace(out)


def _converted(table: RouteTable, scan: TableScan, top_k: int) -> Iterator[pa.Table]:
    """Every batch normalised to trace types, with `step` and `phase` filled in where the table has none."""
    for batch in table.batches():
        batch = normalise(batch, ROUTE_COLUMNS, top_k, str(table.src))
        if "step" not in batch.column_names:
            seq = batch.column("seq_id").to_numpy()
            batch = batch.append_column("step", pa.array(np.searchsorted(scan.seq_ids, seq).astype(np.int32)))
        if "phase" not in batch.column_names:
            codes = pa.array(np.zeros(batch.num_rows, np.int8))
            batch = batch.append_column("phase", pa.DictionaryArray.from_arrays(codes, pa.array(PHASES)))
        yield batch


def _in_trace_order(table: RouteTable, scan: TableScan, top_k: int, spill: Path) -> Iterator[pa.Table]:
    """The converted rows sorted (stably) by (step, seq_id, pos, layer), a batch or a bucket at a time."""
    if scan.ordered:
        yield from _converted(table, scan, top_k)
        return
    import pyarrow.parquet as pq

    edges = _bucket_edges(scan.step_rows, BUCKET_ROWS)
    writers: dict[int, pq.ParquetWriter] = {}
    for batch in _converted(table, scan, top_k):
        step_key = batch.column("step" if "step" in table.names else "seq_id").to_numpy()
        bucket = np.searchsorted(edges, np.searchsorted(scan.step_keys, step_key), side="right") - 1
        for b in np.unique(bucket):
            if b not in writers:
                writers[b] = pq.ParquetWriter(spill / f"bucket-{b:06d}.parquet", batch.schema, compression="none")
            writers[b].write_table(batch.filter(pa.array(bucket == b)))
    for writer in writers.values():
        writer.close()
    for b in sorted(writers):
        yield pq.read_table(spill / f"bucket-{b:06d}.parquet").sort_by([(k, "ascending") for k in SORT_KEYS])


def _bucket_edges(step_rows: np.ndarray, bucket_rows: int) -> np.ndarray:
    """Index of the first step of each bucket: whole steps, about `bucket_rows` rows a bucket."""
    edges, filled = [0], 0
    for i, rows in enumerate(step_rows.tolist()):
        if filled and filled + rows > bucket_rows:
            edges.append(i)
            filled = 0
        filled += rows
    return np.array(edges, np.int64)


def _slices(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of `tables` again, `rows` at a time (the last slice may be shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, rows)
            pending, count = [joined.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(pending)


def _write(writer: TraceWriter, slices: Iterator[pa.Table], total: int, progress: Progress | None) -> None:
    """Write route slices in trace order, and the load of each step once its last row has passed."""
    info = writer.meta.model
    top_k, keys_per_step = info.top_k, len(PHASES) * (max(info.moe_layers) + 1) * info.num_experts
    done = 0
    carried: pa.Table | None = None  # load counts of the last step seen, which the next slice may continue
    for piece in slices:
        _write_slice(writer, piece)
        counts = _slice_load(piece, top_k, keys_per_step)
        if carried is not None and carried.num_rows:
            same = pc.equal(counts.column("step"), carried.column("step")[0])
            merged = _sum_counts(pa.concat_tables([carried, counts.filter(same)]))
            counts = pa.concat_tables([merged, counts.filter(pc.invert(same))])
        last = piece.column("step")[-1]
        complete = pc.less(counts.column("step"), last)
        _write_load(writer, counts.filter(complete))
        carried = counts.filter(pc.invert(complete))
        done += piece.num_rows
        if progress is not None:
            progress(done, total, "writing")
    if carried is not None:
        _write_load(writer, carried)


def _slice_load(piece: pa.Table, top_k: int, keys_per_step: int) -> pa.Table:
    """The load of a slice of route rows (sorted by step), sorted by (step, phase, layer, expert).

    Counted a few steps at a time, with steps counted from the first of each group: load_from_routes
    then counts with a bincount over at most COUNT_KEYS keys (phases × layers × experts a step)."""
    step = piece.column("step").to_numpy()
    offset = step - step[0]
    bounds = np.searchsorted(offset, np.arange(0, offset[-1] + 1, max(1, COUNT_KEYS // keys_per_step)))
    parts = []
    for start, stop in zip(bounds, [*bounds[1:], len(step)]):
        if stop > start:
            rows = piece.slice(start, stop - start)
            first = int(step[start])
            columns = {
                "step": pa.array(step[start:stop] - first),
                **{k: rows.column(k) for k in ("phase", "layer", "experts")},
            }
            counts = load_from_routes(pa.table(columns), top_k)
            parts.append(counts.set_column(0, "step", pa.array(counts.column("step").to_numpy() + first, pa.int32())))
    return pa.concat_tables(parts)


def _sum_counts(load: pa.Table) -> pa.Table:
    """Load rows with the same (step, phase, layer, expert) summed, sorted by that key."""
    if load.num_rows == 0:
        return load
    phase = pc.index_in(load.column("phase").cast(pa.string()), pa.array(PHASES)).to_numpy()
    step, layer, expert, tokens = (load.column(k).to_numpy() for k in ("step", "layer", "expert", "tokens"))
    order = np.lexsort((expert, layer, phase, step))
    keys = np.stack([step[order], phase[order], layer[order], expert[order]]).astype(np.int64)
    starts = np.flatnonzero(np.concatenate([[True], (np.diff(keys, axis=1) != 0).any(axis=0)]))
    summed = np.add.reduceat(tokens[order].astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    first = keys[:, starts]
    return pa.Table.from_arrays(
        [
            pa.array(first[0], pa.int32()),
            pa.DictionaryArray.from_arrays(pa.array(first[1], pa.int8()), pa.array(PHASES)),
            pa.array(first[2], pa.int16()),
            pa.array(first[3], pa.int16()),
            pa.array(summed, pa.int32()),
        ],
        schema=load.schema,
    )


def _write_load(writer: TraceWriter, load: pa.Table) -> None:
    phases = load.column("phase").cast(pa.string())
    for phase in PHASES:
        part = load.filter(pc.equal(phases, phase))
        if part.num_rows:
            writer.write_load(
                step=part.column("step").to_numpy(),
                phase=phase,
                layer=part.column("layer").to_numpy(),
                expert=part.column("expert").to_numpy(),
                tokens=part.column("tokens").to_numpy(),
            )


def _write_slice(writer: TraceWriter, table: pa.Table) -> None:
    """Write route rows, the rows of each phase together (phases in name order)."""
    names = table.column_names
    codes = pc.index_in(table.column("phase").cast(pa.string()), pa.array(PHASES)).to_numpy()
    for phase in sorted(PHASES):
        rows = np.flatnonzero(codes == PHASES.index(phase))
        if len(rows) == 0:
            continue
        part = table if len(rows) == table.num_rows else table.take(pa.array(rows))
        writer.write_routes(
            seq_id=part.column("seq_id").to_numpy(),
            pos=part.column("pos").to_numpy(),
            step=part.column("step").to_numpy(),
            phase=phase,
            layer=part.column("layer").to_numpy(),
            experts=_to_numpy(part.column("experts")),
            token_id=_optional(part, "token_id") if "token_id" in names else None,
            weights=_to_numpy(part.column("weights")) if "weights" in names else None,
            pregate_experts=_to_numpy(part.column("pregate_experts")) if "pregate_experts" in names else None,
            token=np.asarray(part.column("token").to_pylist(), dtype=object) if "token" in names else None,
        )


def _optional(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise TraceFormatError(f"column '{name}' has missing values")
    return column.to_numpy()

"""`moetrace import`: turn a generic route table (Parquet or CSV) into a trace.

The table needs `seq_id`, `pos`, `layer` and `experts` (a list of expert ids per row; in CSV a
string such as "[3, 17, 42]" or "3 17 42"), and may carry `weights`, `token_id`, `token`, `step`
and `phase`. Without `step`, each sequence is taken as one prefill forward pass, in `seq_id` order.
"""

from __future__ import annotations

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


def read_route_table(src: Path) -> pa.Table:
    """Read a Parquet or CSV route table, with list columns parsed from strings where needed."""
    if not src.exists():
        raise TraceNotFoundError(f"route table {src} does not exist")
    suffix = src.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(src)
        elif suffix in (".csv", ".tsv"):
            from pyarrow import csv

            options = csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = csv.read_csv(src, parse_options=options)
        else:
            raise TraceFormatError(f"{src}: expected a .parquet or .csv route table, got '{src.suffix}'")
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceFormatError(
            f"{src} is not a readable {suffix.lstrip('.')} file: {str(exc).splitlines()[0]}"
        ) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise TraceFormatError(f"{src}: route table has no column '{missing[0]}' (needs {', '.join(REQUIRED)})")
    for name in ("experts", "weights", "pregate_experts"):
        if name in table.column_names and pa.types.is_string(table.column(name).type):
            table = table.set_column(table.column_names.index(name), name, _parse_list(table.column(name), name, src))
    return table


def _parse_list(column: pa.ChunkedArray, name: str, src: Path) -> pa.ChunkedArray:
    stripped = pc.utf8_trim(pc.replace_substring_regex(column, r"[\[\]()]", ""), " ")
    parts = pc.split_pattern_regex(stripped, r"[,;\s]+")
    value_type = pa.float32() if name == "weights" else pa.int64()
    try:
        return parts.cast(pa.list_(value_type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TraceFormatError(f"{src}: column '{name}' holds text that is not a list of numbers") from None


def import_routes(
    src: str | Path,
    out: str | Path,
    *,
    num_experts: int | None = None,
    model_name: str | None = None,
    force: bool = False,
    flush_rows: int = DEFAULT_FLUSH_ROWS,
) -> Trace:
    """Import the route table `src` as a trace in `out`; returns the trace opened for reading."""
    src, out = Path(src), Path(out)
    check_output_dir(out, force)
    table = read_route_table(src)
    table = normalise(table, ROUTE_COLUMNS, None, str(src))
    top_k = table.schema.field("experts").type.list_size
    experts = _to_numpy(table.column("experts")).astype(np.int64)
    if experts.size and experts.min() < 0:
        raise TraceFormatError(f"{src}: column 'experts' holds negative expert ids")
    seen = int(experts.max(initial=0)) + 1
    if num_experts is None:
        num_experts = seen
    elif num_experts < seen:
        raise InvalidArgumentError(f"--num-experts {num_experts} is too small: {src} routes to expert {seen - 1}")
    if top_k > num_experts:
        raise TraceFormatError(f"{src}: rows list {top_k} experts but there are only {num_experts}")
    if "step" not in table.column_names:
        seq = table.column("seq_id").to_numpy()
        _, step = np.unique(seq, return_inverse=True)
        table = table.append_column("step", pa.array(step.astype(np.int32)))
    if "phase" not in table.column_names:
        codes = pa.array(np.zeros(table.num_rows, np.int8))
        table = table.append_column("phase", pa.DictionaryArray.from_arrays(codes, pa.array(PHASES)))
    else:
        bad = set(pc.unique(table.column("phase").cast(pa.string())).to_pylist()) - set(PHASES)
        if bad:
            raise TraceFormatError(f"{src}: column 'phase' holds {sorted(map(str, bad))}; expected {', '.join(PHASES)}")
    table = table.sort_by(
        [("step", "ascending"), ("seq_id", "ascending"), ("pos", "ascending"), ("layer", "ascending")]
    )
    layers = tuple(int(x) for x in np.unique(table.column("layer").to_numpy()))
    info = ModelInfo(
        num_experts=num_experts, top_k=top_k, moe_layers=layers, name=model_name or src.stem, model_type=None
    )
    run = {
        "mode": "import",
        "source": str(src),
        "rows": table.num_rows,
        "num_sequences": len(pc.unique(table.column("seq_id"))),
    }
    extra = tuple(c for c in ("pregate_experts", "token") if c in table.column_names)
    weights_type = table.schema.field("weights").type.value_type if "weights" in table.column_names else pa.float32()
    with TraceWriter(
        out, TraceMeta.new(info, run), weights_type=weights_type, extra_columns=extra, flush_rows=flush_rows, force=True
    ) as writer:
        for start in range(0, table.num_rows, flush_rows):
            _write_slice(writer, table.slice(start, flush_rows))
        load = load_from_routes(table.select(["step", "phase", "layer", "experts"]), top_k)
        for phase in PHASES:
            part = load.filter(pc.equal(load.column("phase").cast(pa.string()), phase))
            if part.num_rows:
                writer.write_load(
                    step=part.column("step").to_numpy(),
                    phase=phase,
                    layer=part.column("layer").to_numpy(),
                    expert=part.column("expert").to_numpy(),
                    tokens=part.column("tokens").to_numpy(),
                )
    return open_trace(out)


def _write_slice(writer: TraceWriter, table: pa.Table) -> None:
    names = table.column_names
    phases = _to_numpy(table.column("phase"))
    for phase in np.unique(phases):
        rows = np.flatnonzero(phases == phase)
        part = table.take(pa.array(rows))
        writer.write_routes(
            seq_id=part.column("seq_id").to_numpy(),
            pos=part.column("pos").to_numpy(),
            step=part.column("step").to_numpy(),
            phase=str(phase),
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

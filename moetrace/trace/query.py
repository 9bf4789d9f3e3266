"""SQL over a trace: an embedded DuckDB connection with `routes` and `load` views over its parts.

The views read the trace's Parquet parts in place (nothing is copied or loaded first), so a query
runs out of core: DuckDB streams the parts, keeps at most `memory_limit` in memory and spills large
sorts and joins to a temporary directory. moetrace's own analytics (`trace_stats`, the load of a
trace without load parts) are queries on these views too.

- `routes`: one row per (token, MoE layer): `seq_id`, `pos`, `step` (INTEGER), `phase` (VARCHAR),
  `layer` (SMALLINT), `token_id` (INTEGER, NULL where not recorded), `experts` (SMALLINT[]),
  `weights` (FLOAT[], NULL where not recorded), and `pregate_experts` (SMALLINT[]) and `token`
  (VARCHAR) where some part holds them. Only traces with routes parts (or no parts at all) have it.
- `load`: one row per (step, layer, expert) with a non-zero count: `step`, `phase`, `layer`,
  `expert`, `tokens`; the load parts where the trace has them, else counted from `routes`.

Parts of one trace may differ (dictionary or plain `phase`, float16 or float32 weights, fixed- or
variable-size lists, integer widths, optional columns in some parts only): the views read them by
column name and cast every column to the one type above.
"""

from __future__ import annotations

import tempfile
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from moetrace.errors import QueryError, TraceFormatError
from moetrace.trace.schema import LOAD_COLUMNS, ROUTE_COLUMNS, check_columns

if TYPE_CHECKING:
    import duckdb

    from moetrace.trace.reader import Trace

DEFAULT_MEMORY_LIMIT = "1GB"
"""What DuckDB may hold in memory per connection unless told otherwise; beyond it, it spills to disk."""

#: SQL type of every known column in the views
ROUTE_TYPES = {
    "seq_id": "INTEGER",
    "pos": "INTEGER",
    "step": "INTEGER",
    "phase": "VARCHAR",
    "layer": "SMALLINT",
    "token_id": "INTEGER",
    "experts": "SMALLINT[]",
    "weights": "FLOAT[]",
    "pregate_experts": "SMALLINT[]",
    "token": "VARCHAR",
}
LOAD_TYPES = {"step": "INTEGER", "phase": "VARCHAR", "layer": "SMALLINT", "expert": "SMALLINT", "tokens": "INTEGER"}
_ALWAYS = ("token_id", "weights")
"""Optional route columns that the `routes` view always has (NULL where a part lacks them)."""

_NO_ROUTES = "this trace has no routes/ parts (it records load only): query `load` instead"


def connect(
    trace: Trace | str | Path, *, memory_limit: str | None = None, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views `routes` (when the trace has routes) and `load`.

    `memory_limit` is a DuckDB size such as '1GB' (DEFAULT_MEMORY_LIMIT when None); `threads` is
    DuckDB's worker count (all cores when None). Large intermediate results spill to a temporary
    directory that DuckDB removes when the connection closes. Without ORDER BY, rows come in no
    particular order (DuckDB is told not to preserve it, which keeps memory bounded).
    """
    import duckdb

    opened = _open(trace)
    spill = Path(tempfile.gettempdir()) / f"moetrace-duckdb-{uuid.uuid4().hex}"
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT,
        "temp_directory": str(spill),
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
    }
    if threads is not None:
        config["threads"] = int(threads)
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise QueryError(f"cannot start DuckDB: {_first_line(exc)}") from None
    con.execute("SET enable_progress_bar = false")
    weakref.finalize(con, _remove, spill)  # DuckDB removes it on close; this covers a crash
    route_parts, load_parts = opened.route_parts, opened.load_parts
    if route_parts or not load_parts:
        con.execute(f"CREATE VIEW routes AS {routes_sql(route_parts)}")
    if load_parts:
        con.execute(f"CREATE VIEW load AS {load_sql(load_parts)}")
    else:
        con.execute(f"CREATE VIEW load AS {derived_load_sql('routes')}")
    return con


def query(trace: Trace | str | Path, sql: str, *, memory_limit: str | None = None) -> pa.Table:
    """The result of `sql` over the trace's `routes` and `load` views, as one Arrow table."""
    con = connect(trace, memory_limit=memory_limit)
    try:
        return _run(con, sql).to_arrow_table()
    except Exception as exc:
        raise _error(exc, _has_routes(con)) from None
    finally:
        con.close()


def query_batches(
    trace: Trace | str | Path, sql: str, *, batch_rows: int = 100_000, memory_limit: str | None = None
) -> pa.RecordBatchReader:
    """The result of `sql` streamed as Arrow record batches of at most `batch_rows` rows.

    The connection stays open while the reader is referenced; read it to the end or drop it."""
    con = connect(trace, memory_limit=memory_limit)
    routes = _has_routes(con)
    try:
        reader = _run(con, sql).to_arrow_reader(batch_rows)
    except Exception as exc:
        con.close()
        raise _error(exc, routes) from None
    return _Guarded(reader, con, routes).reader()


def routes_sql(parts: Sequence[Path]) -> str:
    """SELECT over route parts with the canonical columns and types (an empty SELECT when no parts)."""
    present = _columns(parts, ROUTE_COLUMNS, "routes")
    names = [c.name for c in ROUTE_COLUMNS if c.required or c.name in present or c.name in _ALWAYS]
    select = ", ".join(_cast(name, ROUTE_TYPES[name], name in present) for name in names)
    return f"SELECT {select} FROM {_source(parts)}"


def load_sql(parts: Sequence[Path]) -> str:
    """SELECT over load parts with the canonical columns and types."""
    present = _columns(parts, LOAD_COLUMNS, "load")
    select = ", ".join(_cast(name, sql_type, name in present) for name, sql_type in LOAD_TYPES.items())
    return f"SELECT {select} FROM {_source(parts)}"


def derived_load_sql(routes: str) -> str:
    """Load rows counted from the route rows of the relation `routes` (one per non-zero count)."""
    return (
        "SELECT step, phase, layer, expert::SMALLINT AS expert, count(*)::INTEGER AS tokens "
        f"FROM (SELECT step, phase, layer, unnest(experts) AS expert FROM {routes}) "
        "GROUP BY step, phase, layer, expert"
    )


def sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _open(trace: Trace | str | Path) -> Trace:
    from moetrace.trace.reader import Trace, open_trace

    return trace if isinstance(trace, Trace) else open_trace(trace)


def _columns(parts: Sequence[Path], spec: tuple, what: str) -> set[str]:
    """Known columns held by at least one part; every part is checked against the schema (footers only)."""
    present: set[str] = set()
    for part in parts:
        try:
            schema = pq.read_schema(part)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TraceFormatError(f"{part} is not a readable Parquet file: {_first_line(exc)}") from None
        check_columns(schema, spec, str(part))
        present.update(schema.names)
    return present


def _source(parts: Sequence[Path]) -> str:
    if not parts:
        return "(SELECT 1 WHERE false)"
    files = ", ".join(sql_string(str(p)) for p in parts)
    return f"read_parquet([{files}], union_by_name = true)"


def _cast(name: str, sql_type: str, present: bool) -> str:
    return f'"{name}"::{sql_type} AS "{name}"' if present else f'NULL::{sql_type} AS "{name}"'


def _has_routes(con: duckdb.DuckDBPyConnection) -> bool:
    rows = con.sql("SELECT count(*) FROM duckdb_views() WHERE view_name = 'routes'").fetchall()
    return bool(rows[0][0])


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation:
    """The relation of the last statement of `sql` (a statement without rows gives an empty one)."""
    if not sql.strip():
        raise QueryError("bad SQL: the query is empty")
    relation = con.sql(sql)
    return relation if relation is not None else con.sql("SELECT 1 AS ok WHERE false")


def _error(exc: BaseException, routes: bool) -> BaseException:
    import duckdb

    if isinstance(exc, QueryError) or not isinstance(exc, duckdb.Error):
        return exc
    line = _first_line(exc)
    if not routes and "routes" in line and isinstance(exc, duckdb.CatalogException):
        return QueryError(f"bad SQL: {line} ({_NO_ROUTES})")
    return QueryError(f"bad SQL: {line}")


class _Guarded:
    """A record batch reader that turns DuckDB errors raised mid-stream into QueryError and keeps
    its connection open until it is read."""

    def __init__(self, reader: pa.RecordBatchReader, con: duckdb.DuckDBPyConnection, routes: bool) -> None:
        self._source, self._con, self._routes = reader, con, routes

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self._source.schema, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                try:
                    batch = self._source.read_next_batch()
                except StopIteration:
                    return
                except Exception as exc:
                    raise _error(_cause(exc), self._routes) from None
                yield batch
        finally:
            self._con.close()


def _cause(exc: BaseException) -> BaseException:
    """The DuckDB error behind an Arrow error raised while streaming, where there is one."""
    import duckdb

    if isinstance(exc, duckdb.Error):
        return exc
    text = str(exc)
    for prefix in ("Invalid Input Error", "Conversion Error", "Out of Memory Error", "Binder Error"):
        if prefix in text:
            return duckdb.Error(text[text.index(prefix) :])
    return exc


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

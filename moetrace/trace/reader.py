"""Reading traces: `open_trace(path)` gives the meta and the routes and load of a trace.

Every command reads traces through this module. Only the columns asked for are read; every part
is checked against the schema module; an incomplete trace is read from its complete parts with a
warning; a trace without `load/` parts has its load derived from its routes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moetrace.errors import TraceFormatError, TraceNotFoundError
from moetrace.trace.meta import TraceMeta, read_meta
from moetrace.trace.schema import (
    LOAD_COLUMNS,
    LOAD_DIR,
    META_FILE,
    PART_GLOB,
    PHASES,
    ROUTE_COLUMNS,
    ROUTES_DIR,
    check_columns,
    normalise,
)


class IncompleteTraceWarning(UserWarning):
    """The trace's run did not finish; only its complete parts are read."""


@dataclass(frozen=True)
class LoadSteps:
    """The steps of a trace's load without its experts: what grouping steps into rows needs."""

    steps: np.ndarray
    """(S,) int64, ascending: every step that has load."""
    phases: np.ndarray
    """(S,) str: the phase of each step."""
    first_layer: np.ndarray
    """(S,) int64: token-routings of the first MoE layer in each step (0 where it routed none)."""

    def select(self, index: slice | np.ndarray) -> LoadSteps:
        """These steps at `index` (e.g. the first tenth), for a `dense_load` of those steps only."""
        return LoadSteps(self.steps[index], self.phases[index], self.first_layer[index])


@dataclass(frozen=True)
class DenseLoad:
    """Expert load as a dense array: a row per step, or per group of consecutive steps."""

    steps: np.ndarray
    """(S,) int: the step number of each row of `tokens` (the first step of its group)."""
    phases: np.ndarray
    """(S,) str: the phase of each row's (first) step."""
    layers: tuple[int, ...]
    """Decoder layer index of each entry of the layer axis."""
    tokens: np.ndarray
    """(S, L, E) int32 (int64 where a count does not fit): token-routings per row, MoE layer and expert."""
    step_counts: np.ndarray
    """(S,) int64: how many steps with load each row sums (all 1 unless steps were grouped)."""

    def shares(self) -> np.ndarray:
        """(S, L, E) float64: each expert's share of its layer's routings in each row (0 where none)."""
        totals = self.tokens.sum(axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, self.tokens / np.maximum(totals, 1), 0.0)


class Trace:
    """A trace directory opened for reading."""

    def __init__(self, path: Path, meta: TraceMeta) -> None:
        self.path = path
        self.meta = meta
        self.route_parts = sorted((path / ROUTES_DIR).glob(PART_GLOB))
        self.load_parts = sorted((path / LOAD_DIR).glob(PART_GLOB))

    def __repr__(self) -> str:
        m = self.meta.model
        return (
            f"Trace({str(self.path)!r}, model={m.name!r}, layers={len(m.moe_layers)}, "
            f"experts={m.num_experts}, top_k={m.top_k}, parts={len(self.route_parts)})"
        )

    @property
    def has_routes(self) -> bool:
        return bool(self.route_parts)

    def route_columns(self) -> list[str]:
        """Known columns present in this trace's routes."""
        if not self.route_parts:
            return []
        names = set(_read_schema(self.route_parts[0]).names)
        return [c.name for c in ROUTE_COLUMNS if c.name in names]

    # -- routes -------------------------------------------------------------------------------

    def routes(self, columns: list[str] | None = None) -> pa.Table:
        """The routes as one Arrow table with canonical types; `columns` limits what is read."""
        return _read_parts(self.route_parts, ROUTE_COLUMNS, self.meta.model.top_k, columns, "routes")

    def routes_df(self, columns: list[str] | None = None) -> Any:
        """The routes as a pandas DataFrame (`experts` and `weights` hold numpy arrays)."""
        return self.routes(columns).to_pandas()

    def routes_arrays(self, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """The routes as numpy arrays; list columns become (rows, top_k) arrays, `phase` strings."""
        table = self.routes(columns)
        out: dict[str, np.ndarray] = {}
        for name in table.column_names:
            out[name] = _to_numpy(table.column(name))
        return out

    # -- load ---------------------------------------------------------------------------------

    def load(self, columns: list[str] | None = None) -> pa.Table:
        """The load rows as one Arrow table; counted from the routes by DuckDB (over the parts in
        place, ordered by step, layer and expert) when the trace has no load parts."""
        if self.load_parts:
            return _read_parts(self.load_parts, LOAD_COLUMNS, None, columns, "load")
        from moetrace.trace.query import query

        table = query(self, "SELECT * FROM load ORDER BY step, layer, expert")
        table = normalise(table, LOAD_COLUMNS, None, f"{self.path} (load counted from routes)")
        return table.select(columns) if columns else table

    def load_df(self, columns: list[str] | None = None) -> Any:
        return self.load(columns).to_pandas()

    def load_steps(self, phase: str | None = None) -> LoadSteps:
        """The steps with load (in `phase` only, when given), their phases and their first MoE layer's
        routings: one query whose result is a few numbers per step. A trace without load parts is
        read from its routes, counting each route's experts instead of expanding them into load rows."""
        from moetrace.trace.query import connect, sql_string

        _check_phase(phase)
        known = ", ".join(sql_string(p) for p in PHASES)
        first = self.meta.model.moe_layers[0]
        source, routings, where = "load", "tokens", ["true"]
        if self.route_parts and not self.load_parts:
            source, routings, where = "routes", "len(experts)", ["len(experts) > 0"]  # the routes that give load rows
        if phase is not None:
            where.append(f"phase = {sql_string(phase)}")
        con = connect(self)
        try:
            got = con.sql(
                f"SELECT step, min(phase) AS phase, "
                f"coalesce(sum({routings}) FILTER (WHERE layer = {first}), 0)::BIGINT AS first_layer, "
                f"list(DISTINCT coalesce(phase, 'NULL')) FILTER (WHERE phase IS NULL OR phase NOT IN ({known})) AS bad "
                f"FROM {source} WHERE {' AND '.join(where)} GROUP BY step ORDER BY step"
            ).to_arrow_table()
        finally:
            con.close()
        unknown = sorted({p for bad in got.column("bad").to_pylist() if bad for p in bad})
        if unknown:
            raise TraceFormatError(f"column 'phase' holds {unknown}; expected {', '.join(PHASES)}")
        return LoadSteps(
            steps=np.asarray(got.column("step").to_numpy(), np.int64),
            phases=np.asarray(got.column("phase").to_numpy(zero_copy_only=False)).astype(str),
            first_layer=np.asarray(got.column("first_layer").to_numpy(), np.int64),
        )

    def dense_load(
        self, phase: str | None = None, *, steps: LoadSteps | None = None, row_of_step: np.ndarray | None = None
    ) -> DenseLoad:
        """Load as a dense rows × layers × experts array: a row per step with load, or per group of steps.

        `steps` is `self.load_steps(phase)` (queried when not given) or a selection of it (only those
        steps are read); `row_of_step` ((S,) ints, one per step of `steps`, starting at 0 and rising
        by 0 or 1) sums consecutive steps into one row.
        DuckDB sums the load per (row, layer, expert) over the parts in place and hands it over in
        batches, so only the dense array itself is held in memory."""
        from moetrace.trace.query import connect, sql_string

        _check_phase(phase)
        steps = steps if steps is not None else self.load_steps(phase)
        count = len(steps.steps)
        rows = np.arange(count) if row_of_step is None else np.asarray(row_of_step, np.int64)
        if rows.shape != (count,) or (count and (rows[0] != 0 or not np.isin(np.diff(rows), (0, 1)).all())):
            raise ValueError("row_of_step must hold one row per step, starting at 0 and rising by 0 or 1")
        first = np.flatnonzero(np.diff(rows, prepend=-1))  # the first step of each row
        layers = tuple(self.meta.model.moe_layers)
        dense = np.zeros((len(first), len(layers), self.meta.model.num_experts), np.int32)
        if count:
            where = f"WHERE l.phase = {sql_string(phase)}" if phase is not None else ""
            con = connect(self)
            try:
                con.register(
                    "step_rows", pa.table({"step": steps.steps.astype(np.int32), "row_index": rows.astype(np.int32)})
                )
                batches = con.sql(
                    "SELECT r.row_index, l.layer, l.expert, sum(l.tokens)::BIGINT AS tokens "
                    f"FROM load l JOIN step_rows r ON l.step = r.step {where} GROUP BY r.row_index, l.layer, l.expert"
                ).to_arrow_reader(1_000_000)
                for batch in batches:
                    dense = self._add_batch(dense, batch)
            finally:
                con.close()
        return DenseLoad(
            steps=steps.steps[first],
            phases=steps.phases[first],
            layers=layers,
            tokens=dense,
            step_counts=np.diff(np.append(first, count)),
        )

    def _add_batch(self, dense: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        """`dense` with the (row, layer, expert, tokens) sums of `batch` written in (each cell comes
        once); widened to int64 when a sum does not fit int32."""
        if any(column.null_count for column in batch.columns):
            raise TraceFormatError(f"{self.path}: load rows with no layer, expert or token count")
        row, layer, expert, tokens = (np.asarray(column.to_numpy(), np.int64) for column in batch.columns)
        model = self.meta.model
        layer_pos = check_load_indices(layer, expert, model.moe_layers, model.num_experts, str(self.path))
        if dense.dtype == np.int32 and len(tokens) and tokens.max() > np.iinfo(np.int32).max:
            dense = dense.astype(np.int64)
        dense[row, layer_pos, expert] = tokens
        return dense


def _check_phase(phase: str | None) -> None:
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")


def open_trace(path: str | Path) -> Trace:
    """Open a trace directory; raise a one-line error when it is missing or not a trace."""
    path = Path(path)
    if not path.exists():
        raise TraceNotFoundError(f"trace {path} does not exist")
    if path.is_file():
        if path.suffix in (".parquet", ".csv"):
            raise TraceFormatError(
                f"{path} is a file, not a moetrace trace directory; turn a route table into a trace with "
                f"`moetrace import {path} --out DIR`"
            )
        raise TraceFormatError(f"{path} is a file, not a moetrace trace directory")
    if not (path / META_FILE).exists():
        raise TraceFormatError(f"{path} is not a moetrace trace: it has no {META_FILE}")
    trace = Trace(path, read_meta(path))
    for part in trace.route_parts[:1]:
        check_columns(_read_schema(part), ROUTE_COLUMNS, str(part))
    for part in trace.load_parts[:1]:
        check_columns(_read_schema(part), LOAD_COLUMNS, str(part))
    if not trace.meta.complete:
        warnings.warn(
            f"trace {path} is incomplete (its run did not finish): reading its "
            f"{len(trace.route_parts)} complete routes parts and {len(trace.load_parts)} load parts",
            IncompleteTraceWarning,
            stacklevel=2,
        )
    return trace


def load_from_routes(routes: pa.Table, top_k: int) -> pa.Table:
    """Count token-routings per (step, phase, layer, expert) from route rows."""
    from moetrace.trace.schema import LOAD_SCHEMA

    step = routes.column("step").to_numpy().astype(np.int64)
    layer = routes.column("layer").to_numpy().astype(np.int64)
    phase = _to_numpy(routes.column("phase"))
    experts = _to_numpy(routes.column("experts")).astype(np.int64)
    phase_code = _phase_codes(phase)
    # one int64 key per routing: ((step * phases + phase) * layers + layer) * experts + expert
    n_phase, n_layer, n_expert = len(PHASES), int(layer.max(initial=0)) + 1, int(experts.max(initial=0)) + 1
    row_key = (step * n_phase + phase_code) * n_layer + layer
    if len(step) and row_key.max() < np.iinfo(np.int64).max // n_expert:
        keys = (row_key[:, None] * n_expert + experts).reshape(-1)
    else:
        keys = np.zeros(0, np.int64)
    if keys.size and keys.max() < 50_000_000:
        counts_all = np.bincount(keys)
        unique = np.flatnonzero(counts_all)
        counts = counts_all[unique]
    else:
        unique, counts = np.unique(keys, return_counts=True)
    expert, rest = np.divmod(unique, n_expert)[::-1]
    rest, layer_u = np.divmod(rest, n_layer)
    step_u, phase_u = np.divmod(rest, n_phase)
    return pa.Table.from_arrays(
        [
            pa.array(step_u, pa.int32()),
            pa.DictionaryArray.from_arrays(pa.array(phase_u, pa.int8()), pa.array(PHASES)),
            pa.array(layer_u, pa.int16()),
            pa.array(expert, pa.int16()),
            pa.array(counts, pa.int32()),
        ],
        schema=LOAD_SCHEMA,
    )


def _phase_codes(phase: np.ndarray) -> np.ndarray:
    """Index of each phase name in PHASES; an unknown name is an error."""
    names, inverse = np.unique(phase, return_inverse=True)
    unknown = [str(n) for n in names if n not in PHASES]
    if unknown:
        raise TraceFormatError(f"column 'phase' holds {unknown}; expected {', '.join(PHASES)}")
    return np.array([PHASES.index(n) for n in names], np.int64)[inverse] if len(phase) else np.zeros(0, np.int64)


def check_load_indices(
    layer: np.ndarray, expert: np.ndarray, layers: tuple[int, ...], num_experts: int, where: str
) -> np.ndarray:
    """Each row's position in `layers`; an error naming the first layers or the expert range when a
    row's layer is not an MoE layer of the trace or its expert is outside 0..num_experts-1."""
    layer_pos = _layer_positions(layer, layers, where)
    if len(expert) and (expert.min() < 0 or expert.max() >= num_experts):
        raise TraceFormatError(f"{where}: load names an expert outside 0..{num_experts - 1}")
    return layer_pos


def _layer_positions(layer: np.ndarray, layers: tuple[int, ...], where: str) -> np.ndarray:
    lookup = np.full(max(max(layers), int(layer.max(initial=0))) + 1, -1, np.int64)
    lookup[list(layers)] = np.arange(len(layers))
    pos = lookup[layer] if len(layer) else np.zeros(0, np.int64)
    if len(pos) and pos.min() < 0:
        bad = sorted(set(layer[pos < 0].tolist()))[:5]
        raise TraceFormatError(f"{where}: layer(s) {bad} are not in meta.json's moe_layers {list(layers)}")
    return pos


def _read_schema(part: Path) -> pa.Schema:
    try:
        return pq.read_schema(part)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceFormatError(f"{part} is not a readable Parquet file: {_first_line(exc)}") from None


def _read_parts(parts: list[Path], spec: Any, top_k: int | None, columns: list[str] | None, what: str) -> pa.Table:
    known = [c.name for c in spec]
    if columns is not None:
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ValueError(f"unknown {what} column(s) {unknown}; known: {known}")
    tables = []
    for part in parts:
        schema = _read_schema(part)
        check_columns(schema, spec, str(part))
        wanted = [c for c in (columns or known) if c in schema.names]
        missing = [c for c in (columns or []) if c not in schema.names]
        if missing:
            raise TraceFormatError(f"{part}: optional column '{missing[0]}' is not in this trace")
        try:
            table = pq.read_table(part, columns=wanted)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TraceFormatError(f"{part} is not a readable Parquet file: {_first_line(exc)}") from None
        tables.append(normalise(table, spec, top_k, str(part)))
    if not tables:
        from moetrace.trace.schema import LOAD_SCHEMA, routes_schema

        schema = routes_schema(top_k or 1) if what == "routes" else LOAD_SCHEMA
        names = [c for c in (columns or known) if c in schema.names]
        return schema.empty_table().select(names)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise TraceFormatError(f"{what} parts of the trace disagree in their columns: {_first_line(exc)}") from None


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        return np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    if pa.types.is_fixed_size_list(dtype):
        array = column.combine_chunks()
        width = dtype.list_size
        values = array.values.slice(array.offset * width, len(array) * width)
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(-1, width)
    return np.asarray(column.to_numpy())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def token_index(step: np.ndarray, seq_id: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct tokens of route rows: ((tokens, 3) sorted (step, seq_id, pos) rows, each row's token)."""
    step, seq_id, pos = (np.asarray(a, np.int64) for a in (step, seq_id, pos))
    if len(step) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    lows = [int(a.min()) for a in (step, seq_id, pos)]
    spans = [int(a.max()) - low + 1 for a, low in zip((step, seq_id, pos), lows)]
    combined = ((step - lows[0]) * spans[1] + (seq_id - lows[1])) * spans[2] + (pos - lows[2])
    unique, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    keys = np.stack([step[first], seq_id[first], pos[first]], axis=1)
    return keys, inverse.reshape(-1)

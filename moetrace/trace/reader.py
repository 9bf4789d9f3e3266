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
class DenseLoad:
    """Per-step expert load as a dense array."""

    steps: np.ndarray
    """(S,) int: the step number of each row of `tokens`."""
    phases: np.ndarray
    """(S,) str: the phase of each step."""
    layers: tuple[int, ...]
    """Decoder layer index of each entry of the layer axis."""
    tokens: np.ndarray
    """(S, L, E) int64: token-routings per step, MoE layer and expert."""

    def shares(self) -> np.ndarray:
        """(S, L, E) float64: each expert's share of its layer's routings in each step (0 where none)."""
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

    def dense_load(self, phase: str | None = None) -> DenseLoad:
        """Load as a dense steps × layers × experts array; steps with no routing at all are left out.

        The sums per (step, phase, layer, expert) are a DuckDB query over the parts in place, so only
        that aggregate is in memory, not the route rows it is counted from."""
        from moetrace.trace.query import connect, sql_string

        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        where = f"WHERE phase = {sql_string(phase)}" if phase is not None else ""
        con = connect(self)
        try:
            got = con.sql(
                f"SELECT step, phase, layer, expert, sum(tokens)::BIGINT AS tokens FROM load {where} "
                "GROUP BY step, phase, layer, expert"
            ).fetchnumpy()
        finally:
            con.close()
        step = np.asarray(got["step"], np.int64)
        phases = np.asarray(got["phase"]).astype(str)
        unknown = sorted(set(np.unique(phases).tolist()) - set(PHASES))
        if unknown:
            raise TraceFormatError(f"column 'phase' holds {unknown}; expected {', '.join(PHASES)}")
        layer = np.asarray(got["layer"], np.int64)
        expert = np.asarray(got["expert"], np.int64)
        layers = self.meta.model.moe_layers
        num_experts = self.meta.model.num_experts
        layer_pos = check_load_indices(layer, expert, layers, num_experts, str(self.path))
        steps, step_row = np.unique(step, return_inverse=True)
        dense = np.zeros((len(steps), len(layers), num_experts), np.int64)
        np.add.at(dense, (step_row, layer_pos, expert), np.asarray(got["tokens"], np.int64))
        step_phase = np.empty(len(steps), dtype=object)
        step_phase[step_row] = phases
        return DenseLoad(steps=steps, phases=step_phase.astype(str), layers=tuple(layers), tokens=dense)


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

"""The access stream of a replay: one need-set per request, in replay order.

`step` order: one request per (step, MoE layer), step-major, layer-minor; its need-set is the
unique experts the step's tokens need at that layer. `token` order: sequence by sequence, position
by position, one request per (token, layer) with that token's experts (decode at batch size 1, and
the way to replay prefill-only traces). Need-sets are sorted ascending: missing experts are
inserted in ascending id order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.trace.reader import Trace, token_index
from moetrace.trace.schema import PHASES

ORDERS = ("step", "token")


@dataclass(frozen=True)
class Stream:
    """Requests in replay order, as flat arrays."""

    layer: np.ndarray
    """(R,) int64: position of the request's layer in `layers` (0 … L−1)."""
    offsets: np.ndarray
    """(R+1,) int64: request r needs ids[offsets[r]:offsets[r+1]]."""
    ids: np.ndarray
    """(A,) int64: expert ids, ascending within each request."""
    unit: np.ndarray
    """(R,) int64: the step (step order) or token (token order) each request belongs to."""
    unit_keys: np.ndarray
    """(units, 3) int64: (step, seq_id, pos) of each token (token order); (step, −1, −1) of each step."""
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    tokens: int
    """Tokens behind the stream (for time per token)."""
    order: str

    @property
    def requests(self) -> int:
        return len(self.layer)

    @property
    def accesses(self) -> int:
        return len(self.ids)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_stream(trace: Trace, order: str = "step", phase: str | None = None) -> Stream:
    """The replay stream of a trace's routes, whole, in memory (`stream_chunks` bounds the memory)."""
    _check(trace, order)
    routes = trace.routes_arrays(list(ROW_COLUMNS))
    if phase is not None:
        keep = routes["phase"] == phase
        routes = {name: values[keep] for name, values in routes.items()}
    if len(routes["step"]) == 0:
        raise TraceFormatError(f"trace {trace.path} has no routes{f' in phase {phase}' if phase else ''}")
    sort = (routes["layer"], routes["step"], routes["pos"], routes["seq_id"])
    row_order = np.lexsort(sort if order == "token" else sort[:2])
    return stream_from_rows({name: routes[name][row_order] for name in ROW_COLUMNS[:-1]}, trace, order)


ROW_COLUMNS = ("seq_id", "pos", "step", "layer", "experts", "phase")
"""What a stream is built from (`phase` only to filter)."""

SORT_MEMORY = "512MB"
"""What DuckDB may hold while it sorts the routes for a replay (beyond it, it spills to disk)."""

ROW_ORDER = {"token": ("seq_id", "pos", "step", "layer"), "step": ("step", "layer")}
"""How route rows are sorted before they become a stream: by token (sequence, position; a token's
layers in order), or by step (layers in order; need-sets merge a step's tokens)."""


def stream_chunks(
    trace: Trace, order: str = "step", phase: str | None = None, *, rows: int = 1_000_000
) -> Iterator[Stream]:
    """The replay stream in pieces of about `rows` route rows, each a whole number of units (tokens or
    steps): their requests, one after another, are `build_stream`'s. The rows are sorted by DuckDB out
    of core, so memory does not grow with the trace."""
    _check(trace, order)
    from moetrace.trace.query import query_batches

    where = ""
    if phase is not None:
        if phase not in PHASES:
            raise InvalidArgumentError(f"--phase must be one of {', '.join(PHASES)}, got {phase!r}")
        where = f"WHERE phase = '{phase}'"
    sql = f"SELECT seq_id, pos, step, layer, experts FROM routes {where} ORDER BY {', '.join(ROW_ORDER[order])}"
    unit_columns = ("seq_id", "pos", "step") if order == "token" else ("step",)
    held: dict[str, np.ndarray] | None = None
    produced = False
    for batch, final in _gathered(query_batches(trace, sql, batch_rows=rows, memory_limit=SORT_MEMORY), rows):
        batch_rows = _batch_arrays(batch, trace.meta.model.top_k)
        if held is not None:
            batch_rows = {name: np.concatenate([held[name], batch_rows[name]]) for name in batch_rows}
        # unless this is the end, hold back the last unit: it may go on in the next batch
        last = len(batch_rows["step"]) if final else _last_unit_start(batch_rows, unit_columns)
        held = {name: values[last:] for name, values in batch_rows.items()}
        if last > 0:
            produced = True
            yield stream_from_rows({name: values[:last] for name, values in batch_rows.items()}, trace, order)
    if not produced:
        raise TraceFormatError(f"trace {trace.path} has no routes{f' in phase {phase}' if phase else ''}")


def _gathered(reader: pa.RecordBatchReader, rows: int) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """The reader's batches joined into batches of at least `rows` rows (the last may be smaller), each
    with whether it is the last."""
    waiting: list[pa.RecordBatch] = []
    count = 0
    ready: pa.RecordBatch | None = None
    for batch in reader:
        waiting.append(batch)
        count += len(batch)
        if count >= rows:
            if ready is not None:
                yield ready, False
            ready = pa.Table.from_batches(waiting).combine_chunks().to_batches()[0]
            waiting, count = [], 0
    if count:
        if ready is not None:
            yield ready, False
        ready = pa.Table.from_batches(waiting).combine_chunks().to_batches()[0]
    if ready is not None:
        yield ready, True


def stream_from_rows(rows: dict[str, np.ndarray], trace: Trace, order: str) -> Stream:
    """The stream of route rows already sorted by ROW_ORDER[order], holding whole units."""
    model = trace.meta.model
    layer_pos = np.full(max(model.moe_layers) + 1, -1, np.int64)
    layer_pos[list(model.moe_layers)] = np.arange(len(model.moe_layers))
    layer = layer_pos[rows["layer"].astype(np.int64)]
    experts = rows["experts"].astype(np.int64)
    step, seq_id, pos = (rows[name].astype(np.int64) for name in ("step", "seq_id", "pos"))
    keys, token = token_index(step, seq_id, pos)
    if order == "token":
        return Stream(
            layer=layer, offsets=np.arange(len(layer) + 1, dtype=np.int64) * model.top_k,
            ids=np.sort(experts, axis=1).reshape(-1), unit=token, unit_keys=keys, layers=model.moe_layers,
            num_experts=model.num_experts, top_k=model.top_k, tokens=len(keys), order=order,
        )  # fmt: skip
    # step order: unique experts per (step, layer)
    num_experts = model.num_experts
    request_key = step * len(model.moe_layers) + layer
    pairs = np.unique(np.repeat(request_key, experts.shape[1]) * num_experts + experts.reshape(-1))
    request, ids = np.divmod(pairs, num_experts)
    requests, first = np.unique(request, return_index=True)
    offsets = np.append(first, len(ids)).astype(np.int64)
    steps = np.unique(step)
    step_of_request = requests // len(model.moe_layers)
    return Stream(
        layer=requests % len(model.moe_layers), offsets=offsets, ids=ids, unit=np.searchsorted(steps, step_of_request),
        unit_keys=np.stack([steps, np.full_like(steps, -1), np.full_like(steps, -1)], axis=1),
        layers=model.moe_layers, num_experts=num_experts, top_k=model.top_k, tokens=len(keys), order=order,
    )  # fmt: skip


def _check(trace: Trace, order: str) -> None:
    if order not in ORDERS:
        raise InvalidArgumentError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not trace.has_routes:
        raise TraceFormatError(f"trace {trace.path} has no routes (only load); a replay needs routes")


def _batch_arrays(batch: pa.RecordBatch, top_k: int) -> dict[str, np.ndarray]:
    """A record batch of (seq_id, pos, step, layer, experts) as numpy arrays; experts (rows, top_k)."""
    out = {name: _numbers(batch.column(name)) for name in ("seq_id", "pos", "step", "layer")}
    out["experts"] = _numbers(batch.column("experts").flatten()).reshape(len(batch), top_k)
    return out


def _numbers(array: pa.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as numpy (zero copy: no detour through pandas)."""
    if array.null_count:
        raise TraceFormatError("a route row has no value in seq_id, pos, step, layer or experts")
    # straight from the data buffer: pyarrow's to_numpy imports pandas (half a second) the first time
    data = array.buffers()[1]
    return np.frombuffer(
        data, np.dtype(str(array.type)), count=len(array), offset=array.offset * array.type.bit_width // 8
    )


def _last_unit_start(rows: dict[str, np.ndarray], unit_columns: tuple[str, ...]) -> int:
    """Index of the first row of the last unit (rows sorted so that a unit's rows are together)."""
    n = len(rows["step"])
    if n == 0:
        return 0
    same = np.ones(n, bool)
    for name in unit_columns:
        same &= rows[name] == rows[name][-1]
    # the last unit's rows are the trailing run where every unit column equals the last row's
    differs = np.flatnonzero(~same)
    return int(differs[-1]) + 1 if len(differs) else 0

"""Trace format v1: the one place that says which columns a trace has and of which types.

The writer builds its Arrow schemas here and the reader validates and normalises every part it
opens here, so the two can never disagree. See docs/trace-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from moetrace.errors import TraceFormatError

SCHEMA_VERSION = 1

META_FILE = "meta.json"
ROUTES_DIR = "routes"
LOAD_DIR = "load"
PART_GLOB = "part-*.parquet"

PHASES = ("prefill", "decode", "train")
PHASE_TYPE = pa.dictionary(pa.int8(), pa.string())

#: kinds a column may have on disk; the reader casts every accepted kind to the canonical type.
_INT, _STRING, _TEXT, _INT_LIST, _FLOAT_LIST = "integer", "string", "text", "list of integers", "list of floats"


@dataclass(frozen=True)
class Column:
    """One column of a trace table."""

    name: str
    kind: str
    required: bool
    doc: str


ROUTE_COLUMNS: tuple[Column, ...] = (
    Column("seq_id", _INT, True, "which sequence (prompt)"),
    Column("pos", _INT, True, "token position within the sequence, from its first token"),
    Column("step", _INT, True, "forward-pass index within the run"),
    Column("phase", _STRING, True, "prefill, decode or train"),
    Column("layer", _INT, True, "decoder layer index of this MoE block"),
    Column("token_id", _INT, False, "the input token id"),
    Column("experts", _INT_LIST, True, "chosen experts, in the router's rank order"),
    Column("weights", _FLOAT_LIST, False, "gate weights as the model applies them"),
    Column("pregate_experts", _INT_LIST, False, "next MoE layer's router on this layer's output"),
    Column("token", _TEXT, False, "the token's text, where an imported table carried it"),
)

LOAD_COLUMNS: tuple[Column, ...] = (
    Column("step", _INT, True, "forward pass (generation) or optimizer step (training)"),
    Column("phase", _STRING, True, "prefill, decode or train"),
    Column("layer", _INT, True, "decoder layer index of this MoE block"),
    Column("expert", _INT, True, "expert index"),
    Column("tokens", _INT, True, "token-routings to that expert in that step"),
)

_INT_TYPES = {
    "seq_id": pa.int32(),
    "pos": pa.int32(),
    "step": pa.int32(),
    "layer": pa.int16(),
    "token_id": pa.int32(),
    "expert": pa.int16(),
    "tokens": pa.int32(),
}


def routes_schema(top_k: int, weights_type: pa.DataType = pa.float32(), extra: tuple[str, ...] = ()) -> pa.Schema:
    """The canonical Arrow schema of a routes part for a model that routes each token to top_k experts."""
    fields = [
        pa.field("seq_id", pa.int32(), nullable=False),
        pa.field("pos", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("phase", PHASE_TYPE, nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("token_id", pa.int32(), nullable=True),
        pa.field("experts", pa.list_(pa.int16(), top_k), nullable=False),
        pa.field("weights", pa.list_(weights_type, top_k), nullable=True),
    ]
    if "pregate_experts" in extra:
        fields.append(pa.field("pregate_experts", pa.list_(pa.int16(), top_k), nullable=True))
    if "token" in extra:
        fields.append(pa.field("token", pa.string(), nullable=True))
    return pa.schema(fields)


LOAD_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int32(), nullable=False),
        pa.field("phase", PHASE_TYPE, nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("expert", pa.int16(), nullable=False),
        pa.field("tokens", pa.int32(), nullable=False),
    ]
)


def _kind_of(dtype: pa.DataType) -> str | None:
    if pa.types.is_dictionary(dtype):
        return _STRING if pa.types.is_string(dtype.value_type) or pa.types.is_large_string(dtype.value_type) else None
    if pa.types.is_integer(dtype):
        return _INT
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return _STRING
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        if pa.types.is_integer(dtype.value_type):
            return _INT_LIST
        if pa.types.is_floating(dtype.value_type):
            return _FLOAT_LIST
    return None


def check_columns(schema: pa.Schema, columns: tuple[Column, ...], where: str) -> None:
    """Raise TraceFormatError naming the first missing required column or wrongly typed column."""
    names = set(schema.names)
    for column in columns:
        if column.name not in names:
            if column.required:
                raise TraceFormatError(f"{where}: required column '{column.name}' ({column.kind}) is missing")
            continue
        dtype = schema.field(column.name).type
        kind = _kind_of(dtype)
        if kind != column.kind and not (column.kind == _TEXT and kind == _STRING):
            raise TraceFormatError(f"{where}: column '{column.name}' has type {dtype}, expected {column.kind}")


def normalise(table: pa.Table, columns: tuple[Column, ...], top_k: int | None, where: str) -> pa.Table:
    """Cast known columns to their canonical types and drop unknown ones.

    Integer columns of any width become their canonical width (an out-of-range value is an error),
    strings become dictionary strings, variable-size expert lists become fixed-size lists of top_k.
    """
    known = {c.name: c for c in columns}
    out_names, out_arrays = [], []
    for name in table.column_names:
        column = known.get(name)
        if column is None:
            continue
        array = table.column(name)
        try:
            array = _cast(array, column, top_k)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TraceFormatError(f"{where}: column '{name}' cannot be read as {column.kind}: {exc}") from None
        out_names.append(name)
        out_arrays.append(array)
    return pa.Table.from_arrays(out_arrays, names=out_names)


def _cast(array: pa.ChunkedArray, column: Column, top_k: int | None) -> pa.ChunkedArray:
    if column.kind == _INT:
        return array.cast(_INT_TYPES[column.name])
    if column.kind == _TEXT:
        return array.cast(pa.string())
    if column.kind == _STRING:
        if pa.types.is_dictionary(array.type):
            return array.cast(pa.string()).dictionary_encode().cast(PHASE_TYPE)
        return array.dictionary_encode().cast(PHASE_TYPE)
    value_type = pa.int16() if column.kind == _INT_LIST else _float_value_type(array.type)
    width = top_k if top_k is not None else _list_width(array)
    if pa.types.is_fixed_size_list(array.type) and array.type.list_size == width:
        return array.cast(pa.list_(value_type, width))
    return _to_fixed_size(array, value_type, width, column.name, inferred=top_k is None)


def _float_value_type(dtype: pa.DataType) -> pa.DataType:
    return pa.float16() if pa.types.is_float16(dtype.value_type) else pa.float32()


def _list_width(array: pa.ChunkedArray) -> int:
    if pa.types.is_fixed_size_list(array.type):
        return array.type.list_size
    import pyarrow.compute as pc

    lengths = pc.list_value_length(array)
    return int(pc.max(lengths).as_py() or 0)


def _to_fixed_size(
    array: pa.ChunkedArray, value_type: pa.DataType, width: int, name: str, inferred: bool
) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    chunks = []
    for chunk in array.chunks:
        lengths = pc.drop_null(pc.list_value_length(chunk))
        if len(lengths) and pc.any(pc.not_equal(lengths, width)).as_py():
            if inferred:
                low = pc.min(pc.drop_null(pc.list_value_length(array))).as_py()
                raise TraceFormatError(f"column '{name}' holds lists of different lengths ({low} to {width})")
            raise TraceFormatError(f"column '{name}' holds lists whose length is not top_k = {width}")
        mask = chunk.is_null() if chunk.null_count else None
        if mask is not None:
            chunk = pc.if_else(mask, pa.scalar([0] * width, chunk.type), chunk)
        values = pc.list_flatten(chunk).cast(value_type)
        chunks.append(pa.FixedSizeListArray.from_arrays(values, width, mask=mask))
    return pa.chunked_array(chunks, type=pa.list_(value_type, width))

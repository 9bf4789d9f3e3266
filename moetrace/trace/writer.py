"""Streaming, crash-safe trace writing.

Rows are buffered in numpy arrays and flushed to a new Parquet part every `flush_rows` rows, so
memory does not grow with the run, and also once the oldest buffered row has waited `flush_seconds`
(checked at each write), so a killed run loses at most its last ~30 s even where a part takes
minutes to fill (a caller that queues rows before writing them must keep its own queue as short).
Each part is written under a temporary name and renamed when complete; `meta.json` says
`complete: false` until `close()`. A process killed at any moment leaves a trace whose complete
parts all read back.

Replacing an existing trace (`force`) writes the new one into a hidden sibling directory and swaps
it in only when it is complete: until then, and after a killed or failed run, the old trace stays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moetrace.errors import OutputExistsError
from moetrace.trace.meta import TraceMeta, write_meta
from moetrace.trace.schema import LOAD_DIR, LOAD_SCHEMA, META_FILE, PHASES, ROUTES_DIR, routes_schema

DEFAULT_FLUSH_ROWS = 262_144
DEFAULT_FLUSH_SECONDS = 30.0
_COMPRESSION = "zstd"


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Raise unless `out_dir` may be written: absent, empty, or (with `force`) an existing trace."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise OutputExistsError(f"{out_dir} already exists and is not empty; pass --force to replace it")
        if not (out_dir / META_FILE).is_file():
            raise OutputExistsError(f"{out_dir} is not empty and is not a moetrace trace; refusing to replace it")


def staging_dir(out_dir: Path) -> Path:
    """Where a trace that will replace `out_dir` is written until it is complete."""
    return out_dir.with_name(f".{out_dir.name}.moetrace-partial")


def prepare_output_dir(out_dir: Path, force: bool) -> Path:
    """Create the directory to write a trace for `out_dir` into, and return it: `out_dir` itself, or,
    when `force` replaces an existing trace there, its staging sibling (the old trace stays until
    `replace_trace`)."""
    check_output_dir(out_dir, force)
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir
    staging = staging_dir(out_dir)
    if staging.exists():  # left by a run that was killed before it completed
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def replace_trace(staging: Path, out_dir: Path) -> None:
    """Swap the complete trace in `staging` in for the one at `out_dir`."""
    old = out_dir.with_name(f".{out_dir.name}.moetrace-old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


class _PartBuffer:
    """Columns waiting to become one Parquet part."""

    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self.directory = directory
        self.schema = schema
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.lengths: list[int] = []
        self.rows = 0
        self.parts = 0
        self.since = 0.0
        """time.monotonic() when the oldest buffered row arrived."""

    def append(self, columns: dict[str, Any], rows: int) -> None:
        if self.rows == 0:
            self.since = time.monotonic()
        for name, chunks in self.columns.items():
            chunks.append(columns.get(name))
        self.lengths.append(rows)
        self.rows += rows

    def due(self, flush_rows: int, flush_seconds: float) -> bool:
        """Whether the buffer holds a part's worth of rows, or rows that have waited long enough."""
        return self.rows >= flush_rows or (self.rows > 0 and time.monotonic() - self.since >= flush_seconds)

    def flush(self) -> None:
        if self.rows == 0:
            return
        arrays = [self._arrow(name, chunks) for name, chunks in self.columns.items()]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        final = self.directory / f"part-{self.parts:05d}.parquet"
        tmp = self.directory / f".part-{self.parts:05d}.parquet.tmp"
        pq.write_table(table, tmp, compression=_COMPRESSION)
        os.replace(tmp, final)
        self.parts += 1
        self.rows = 0
        self.lengths = []
        self.columns = {name: [] for name in self.schema.names}

    def _arrow(self, name: str, chunks: list[Any]) -> pa.Array:
        dtype = self.schema.field(name).type
        lengths = self.lengths
        if all(c is None for c in chunks):
            return pa.nulls(sum(lengths), dtype)
        if name == "phase":
            codes: np.ndarray = np.concatenate(chunks)
            return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(PHASES, pa.string()))
        if pa.types.is_fixed_size_list(dtype):
            width = dtype.list_size
            value_type = pa.array([], dtype.value_type).to_numpy().dtype  # not to_pandas_dtype: it imports pandas
            filled = [
                np.zeros((n, width), value_type) if c is None else c.astype(value_type) for c, n in zip(chunks, lengths)
            ]
            values = pa.array(np.concatenate(filled).reshape(-1), dtype.value_type)
            # a row is null where its chunk was None, or where it holds −1 (no value: e.g. no next MoE layer)
            missing = np.concatenate(
                [f[:, 0] < 0 if c is not None else np.ones(n, bool) for c, f, n in zip(chunks, filled, lengths)]
            )
            mask = pa.array(missing) if missing.any() else None
            return pa.FixedSizeListArray.from_arrays(values, width, mask=mask)
        if any(c is None for c in chunks):
            parts = [pa.nulls(n, dtype) if c is None else pa.array(c, dtype) for c, n in zip(chunks, lengths)]
            return pa.concat_arrays(parts)
        return pa.array(np.concatenate(chunks), dtype)


class TraceWriter:
    """Writes one trace directory: `meta.json`, `routes/part-*.parquet`, `load/part-*.parquet`."""

    def __init__(
        self,
        out_dir: str | Path,
        meta: TraceMeta,
        *,
        weights_type: pa.DataType = pa.float32(),
        extra_columns: tuple[str, ...] = (),
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        force: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        """A buffered row is written at the first write call after it has waited this long."""
        self.write_dir = prepare_output_dir(self.out_dir, force)
        """`out_dir`, or the staging directory while the trace replaces one already there."""
        (self.write_dir / ROUTES_DIR).mkdir()
        (self.write_dir / LOAD_DIR).mkdir()
        write_meta(self.write_dir, meta)
        schema = routes_schema(meta.model.top_k, weights_type, extra_columns)
        self._routes = _PartBuffer(self.write_dir / ROUTES_DIR, schema)
        self._load = _PartBuffer(self.write_dir / LOAD_DIR, LOAD_SCHEMA)
        self.rows_written = 0
        self.closed = False

    def write_routes(
        self,
        *,
        seq_id: np.ndarray,
        pos: np.ndarray,
        step: np.ndarray | int,
        phase: str,
        layer: np.ndarray,
        experts: np.ndarray,
        token_id: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        pregate_experts: np.ndarray | None = None,
        token: np.ndarray | None = None,
    ) -> None:
        """Append route rows; `experts` (and `weights`) are (rows, top_k) arrays."""
        rows = len(seq_id)
        if rows == 0:
            return
        columns: dict[str, Any] = {
            "seq_id": seq_id,
            "pos": pos,
            "step": np.broadcast_to(np.asarray(step, np.int32), (rows,)),
            "phase": np.full(rows, PHASES.index(phase), np.int8),
            "layer": layer,
            "token_id": token_id,
            "experts": experts,
            "weights": weights,
            "pregate_experts": pregate_experts,
            "token": token,
        }
        self._routes.append(columns, rows)
        self.rows_written += rows
        self._flush_due()

    def write_load(
        self, *, step: np.ndarray | int, phase: str, layer: np.ndarray, expert: np.ndarray, tokens: np.ndarray
    ) -> None:
        """Append load rows: one per (step, layer, expert) with a non-zero count."""
        rows = len(layer)
        if rows == 0:
            return
        columns = {
            "step": np.broadcast_to(np.asarray(step, np.int32), (rows,)),
            "phase": np.full(rows, PHASES.index(phase), np.int8),
            "layer": layer,
            "expert": expert,
            "tokens": tokens,
        }
        self._load.append(columns, rows)
        self._flush_due()

    def _flush_due(self) -> None:
        for buffer in (self._routes, self._load):
            if buffer.due(self.flush_rows, self.flush_seconds):
                buffer.flush()

    def flush(self) -> None:
        self._routes.flush()
        self._load.flush()

    def close(self, complete: bool = True, **run_updates: Any) -> None:
        """Flush what is buffered; mark the trace complete unless the run failed."""
        if self.closed:
            return
        self.closed = True
        if complete:
            self.flush()
        else:
            with contextlib.suppress(Exception):  # keep what is buffered if we can; never mask the failure
                self.flush()
        if complete:
            self.meta = self.meta.finished(**run_updates)
            write_meta(self.write_dir, self.meta)
            if self.write_dir != self.out_dir:
                replace_trace(self.write_dir, self.out_dir)
        elif self.write_dir != self.out_dir:
            warnings.warn(
                f"the run did not complete: the trace at {self.out_dir} is kept; the incomplete new one is in "
                f"{self.write_dir}",
                stacklevel=2,
            )

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(complete=exc_type is None)

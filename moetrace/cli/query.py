"""`moetrace query`: SQL over a trace's `routes` and `load` views, printed as a table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from moetrace.cli.common import console, handle_errors, json_safe
from moetrace.cli.options import TraceArg

TABLE_ROWS = 50
"""Rows the table shows when --limit is not given."""
CELL_WIDTH = 40
"""Characters a table cell shows at most; longer values end in an ellipsis."""


@handle_errors
def query_command(
    trace: TraceArg,
    sql: Annotated[
        str,
        typer.Argument(
            help="DuckDB SQL over the views `routes` (one row per token and MoE layer) and `load` "
            '(one row per step, layer and expert), e.g. "SELECT layer, count(*) FROM routes GROUP BY layer".',
            show_default=False,
        ),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON array of row objects.")] = False,
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print CSV with a header (a list cell in brackets).")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(help=f"Rows printed at most (the table shows {TABLE_ROWS} when omitted, CSV and JSON all)."),
    ] = None,
    memory_limit: Annotated[
        str, typer.Option(help="Memory DuckDB may use; larger sorts and joins spill to a temporary directory.")
    ] = "1GB",
) -> None:
    """Run SQL over a trace with the embedded DuckDB: the Parquet parts are read in place."""
    from moetrace.errors import InvalidArgumentError
    from moetrace.trace.query import query_batches

    if json_output and csv_output:
        raise InvalidArgumentError("--json and --csv exclude each other")
    if limit is not None and limit < 0:
        raise InvalidArgumentError(f"--limit must be 0 or more, got {limit}")
    reader = query_batches(trace, sql, memory_limit=memory_limit)
    if csv_output:
        _print_csv(reader, limit)
    elif json_output:
        _print_json(reader, limit)
    else:
        _print_table(reader, TABLE_ROWS if limit is None else limit)


def _rows(reader: Any, limit: int | None) -> Iterator[dict[str, Any]]:
    """Row dicts of the result, at most `limit`; stops reading there."""
    if limit == 0:
        return
    seen = 0
    for batch in reader:
        for row in batch.to_pylist():
            yield row
            seen += 1
            if limit is not None and seen >= limit:
                return


def _print_csv(reader: Any, limit: int | None) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(reader.schema.names)
    for row in _rows(reader, limit):
        writer.writerow([_plain(value) for value in row.values()])


def _print_json(reader: Any, limit: int | None) -> None:
    sys.stdout.write("[")
    for i, row in enumerate(_rows(reader, limit)):
        sys.stdout.write(("," if i else "") + "\n" + json.dumps(json_safe(row), default=str, allow_nan=False))
    sys.stdout.write("\n]\n")


def _print_table(reader: Any, limit: int) -> None:
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for name in reader.schema.names:
        table.add_column(name, overflow="ellipsis", no_wrap=True, max_width=CELL_WIDTH)
    shown = total = 0
    for batch in reader:
        total += batch.num_rows
        if shown < limit:
            for row in batch.slice(0, limit - shown).to_pylist():
                table.add_row(*(_cell(value) for value in row.values()))
                shown += 1
    console.print(table)
    what = "row" if total == 1 else "rows"
    console.print(f"[dim]{total:,} {what}[/dim]" if shown == total else f"[dim]first {shown:,} of {total:,} rows[/dim]")


def _plain(value: Any) -> Any:
    """A CSV field: lists as [a, b] (floats in lists to float32's 7 digits), NULL as an empty field."""
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.7g}" if isinstance(v, float) else json.dumps(v, default=str) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(json_safe(value), default=str)
    return "" if value is None else value


def _cell(value: Any) -> str:
    """A table cell: NULL dimmed, floats to 6 significant digits, lists as [a, b]."""
    from rich.markup import escape

    if value is None:
        return "[dim]NULL[/dim]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        inner = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        return escape(f"[{inner}]")
    return escape(str(value))

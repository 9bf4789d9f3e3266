"""`moetrace import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import console, handle_errors
from moetrace.cli.options import Force, OutDir


@handle_errors
def import_command(
    src: Annotated[
        Path,
        typer.Argument(
            help="Route table: .parquet or .csv with seq_id, pos, layer, experts (and optionally weights, token_id, token, step, phase).",
            show_default=False,
        ),
    ],
    out: OutDir = Path("trace"),
    num_experts: Annotated[
        int | None, typer.Option(help="Routed experts per layer; taken from the data (largest id + 1) when omitted.")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model name for meta.json; the file name when omitted.")
    ] = None,
    force: Force = False,
) -> None:
    """Turn a generic route table (another tool's export) into a moetrace trace."""
    from moetrace.cli.progress import RowProgress
    from moetrace.trace.importer import import_routes

    with RowProgress("importing") as progress:
        trace = import_routes(
            src, out, num_experts=num_experts, model_name=model_name, force=force, progress=progress.update
        )
    m = trace.meta.model
    console.print(
        f"[green]imported[/green] {trace.meta.run['rows']:,} rows ({trace.meta.run['num_sequences']:,} sequences, "
        f"{len(m.moe_layers)} layers, {m.num_experts} experts, top-{m.top_k}) → [bold]{trace.path}[/bold]"
    )

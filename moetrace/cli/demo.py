"""`moetrace demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import console, handle_errors


@handle_errors
def demo_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Directory for the demo's traces and figures (its own traces there are replaced)."
        ),
    ] = Path("traces/demo"),
) -> None:
    """Show what moetrace does on the built-in model: record, inspect, plot. No download, no GPU."""
    from moetrace.cli.record import _RecordProgress
    from moetrace.demo import run_demo
    from moetrace.report.tables import stats_renderable

    with _RecordProgress() as progress:
        result = run_demo(out, progress=progress.update, say=lambda s: console.print(f"[bold]·[/bold] {s}"))
    for name, stats in result.stats.items():
        console.rule(f"{name} trace")
        console.print(stats_renderable(stats, str(result.traces[name].path)))
    console.rule("done")
    for name, trace in result.traces.items():
        console.print(f"{name} trace → [bold]{trace.path}[/bold]")
    for figure in result.figures:
        console.print(f"figure → [bold]{figure}[/bold]")
    console.print("try: [cyan]moetrace inspect " + str(result.traces["generate"].path) + " --json[/cyan]")

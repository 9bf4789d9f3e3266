"""`moetrace inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import console, handle_errors, print_json, print_written
from moetrace.cli.options import Json, TraceArg


@handle_errors
def inspect_command(
    trace: TraceArg,
    json_output: Json = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG: load heatmap (layer × expert), load and imbalance over steps.")
    ] = None,
    hottest: Annotated[int, typer.Option(help="Busiest experts listed per layer.")] = 3,
) -> None:
    """Summarise a trace: load balance per layer, hottest experts, temporal locality, inter-layer predictability."""
    from moetrace.errors import InvalidArgumentError
    from moetrace.trace.reader import open_trace
    from moetrace.trace.stats import trace_stats

    if hottest < 0:
        raise InvalidArgumentError(f"--hottest must be 0 or more, got {hottest}")
    opened = open_trace(trace)
    stats = trace_stats(opened, hottest=hottest)
    if plot is not None:
        from moetrace.report.plots import plot_trace_load

        plot_trace_load(opened, plot, title=f"{stats.model} — {trace}")
    if json_output:
        print_json(stats.to_dict())
        return
    from moetrace.cli.tables import stats_renderable

    console.print(stats_renderable(stats, str(trace)))
    print_written((plot, "figure"))

"""`moetrace demo` and `moetrace demo-model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import console, handle_errors

demo_model_app = typer.Typer(help="The built-in demo model: build it, or see where it is cached.", no_args_is_help=True)


@handle_errors
def demo_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Directory for the demo's traces and figures (its own traces there are replaced)."
        ),
    ] = Path("traces/demo"),
) -> None:
    """Show what moetrace does on the built-in demo model: train (cached), record, inspect, plot. No download, no GPU."""
    from moetrace.cli.common import ensure_demo_model
    from moetrace.cli.progress import RecordProgress, StageProgress, TrainProgress
    from moetrace.cli.tables import stats_renderable
    from moetrace.demo.pipeline import run_demo

    ensure_demo_model()

    def say(text: str) -> None:
        console.print(f"[bold]·[/bold] {text}")

    with TrainProgress("building demo model") as build, RecordProgress() as progress, StageProgress("demo") as stage:
        result = run_demo(
            out, progress=progress.update, build_progress=build.update, stage_progress=stage.update, say=say
        )
    for name, stats in result.stats.items():
        console.rule(f"{name} trace")
        console.print(stats_renderable(stats, str(result.traces[name].path)))
    from moetrace.cli.tables import load_backtest_renderable, path_renderable

    console.rule("forecasting the training load")
    console.print(load_backtest_renderable(result.load_forecast, str(result.traces["train"].path)))
    console.rule("predicting routing paths")
    console.print(path_renderable(result.paths, str(result.traces["generate"].path)))
    from moetrace.cli.tables import simulate_renderable

    console.rule("simulating expert caches")
    console.print(simulate_renderable(result.simulation, str(result.traces["generate"].path)))
    from moetrace.cli.tables import run_renderable

    console.rule("running with experts offloaded")
    console.print(run_renderable(result.offload))
    console.rule("done")
    for name, trace in result.traces.items():
        console.print(f"{name} trace → [bold]{trace.path}[/bold]")
    for figure in result.figures:
        console.print(f"figure → [bold]{figure}[/bold]")
    console.print(f"try: [cyan]moetrace inspect {result.traces['generate'].path} --json[/cyan]")


@demo_model_app.command("build")
@handle_errors
def build_command(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when a cached model exists.")] = False,
) -> None:
    """Train the demo model now (a few minutes on a CPU) and cache it."""
    from moetrace.cli.progress import TrainProgress
    from moetrace.demo.build import build_demo_model

    with TrainProgress("building demo model") as progress:
        folder = build_demo_model(
            force=force, progress=progress.update, say=lambda s: console.print(f"[bold]·[/bold] {s}")
        )
    console.print(f"[green]demo model[/green] → [bold]{folder}[/bold]  (use it with [cyan]--model {folder}[/cyan])")


@demo_model_app.command("info")
@handle_errors
def info_command() -> None:
    """Where the demo model is cached, whether it is built, and its recipe."""
    from moetrace.models.demo_model import BUILD_FILE, DemoSpec, demo_model_dir, is_built

    folder = demo_model_dir()
    console.print(f"folder: [bold]{folder}[/bold] ({'built' if is_built() else 'not built yet'})")
    details = json.loads((folder / BUILD_FILE).read_text()) if is_built() else {"spec": DemoSpec().__dict__}
    console.print_json(json.dumps(details))

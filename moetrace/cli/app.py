"""The `moetrace` command: parse, call one library function, print."""

from __future__ import annotations

import typer

from moetrace import __version__
from moetrace.cli import demo, importer, inspect, predict, query, record, run, simulate
from moetrace.cli.options import RegistryCommand

app = typer.Typer(
    name="moetrace",
    help="Record, inspect, forecast and simulate Mixture-of-Experts routing of transformers models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

app.command("record")(record.record_command)
app.command("inspect")(inspect.inspect_command)
app.command("import")(importer.import_command)
app.command("query")(query.query_command)
app.command("demo")(demo.demo_command)
app.add_typer(predict.predict_app, name="predict")
app.command("simulate", cls=RegistryCommand)(simulate.simulate_command)
app.command("run", cls=RegistryCommand)(run.run_command)
app.add_typer(demo.demo_model_app, name="demo-model")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"moetrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Record, inspect, forecast and simulate Mixture-of-Experts routing of transformers models."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`moetrace predict load` (and, later, `predict path`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import Json, TraceArg, console, handle_errors, print_json, print_written

predict_app = typer.Typer(help="Forecast expert load and routing paths from traces.", no_args_is_help=True)


def _ints(text: str, option: str) -> tuple[int, ...]:
    from moetrace.errors import InvalidArgumentError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidArgumentError(f"{option} takes comma-separated integers, got {text!r}") from None


@predict_app.command("load")
@handle_errors
def load_command(
    trace: TraceArg,
    method: Annotated[
        str, typer.Option(help="Comma-separated: last, mean, window, arima, mlp, lstm.")
    ] = "last,mean,window,arima,mlp,lstm",
    horizon: Annotated[str, typer.Option(help="Steps ahead, one or several (comma-separated).")] = "100",
    every: Annotated[
        int | None, typer.Option(help="Steps between backtest origins (default: about 10 origins).")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Steps before the first origin (default: a fifth of the trace).")
    ] = None,
    history: Annotated[
        int | None, typer.Option(help="Fit or average on at most this many steps before an origin (default: all).")
    ] = None,
    window: Annotated[
        int, typer.Option(help="Width of the window method, and the level the learned methods start from.")
    ] = 100,
    order: Annotated[str, typer.Option(help="ARIMA order p,d,q.")] = "5,1,5",
    arima_history: Annotated[
        int, typer.Option(help="ARIMA fits each series on at most this many steps before an origin.")
    ] = 1000,
    arima_refit: Annotated[
        bool,
        typer.Option(
            "--arima-refit",
            help="Refit ARIMA at every origin (slower); by default it is fitted at the first origin and its filter re-run at later ones.",
        ),
    ] = False,
    phase: Annotated[str | None, typer.Option(help="Read only this trace phase: prefill, decode or train.")] = None,
    bucket: Annotated[
        int | None, typer.Option(help="Group consecutive steps until N tokens were routed (generation traces).")
    ] = None,
    train_trace: Annotated[
        Path | None, typer.Option(help="Fit mlp/lstm on this trace instead of the steps before the first origin.")
    ] = None,
    save: Annotated[Path | None, typer.Option(help="Save the fitted mlp or lstm model (one method).")] = None,
    load: Annotated[
        Path | None, typer.Option(help="Use an mlp or lstm model saved with --save instead of fitting one.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Forecast mode: forecast --horizon steps past the end with one --method into this Parquet file.",
        ),
    ] = None,
    save_forecast: Annotated[
        Path | None, typer.Option(help="Write every backtest forecast beside the actual shares to this Parquet file.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG: actual vs forecast for the hottest experts, and error vs steps ahead.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the learned methods.")] = 0,
    json_output: Json = False,
) -> None:
    """Forecast each expert's share of its layer's load: backtest methods, or forecast past the end (--out)."""
    from moetrace.errors import InvalidArgumentError
    from moetrace.predict.forecasters.arima import parse_order
    from moetrace.predict.load import (
        LoadConfig,
        backtest_load,
        backtest_table,
        forecast_load,
        forecast_table,
        save_forecaster,
    )
    from moetrace.trace.reader import open_trace

    methods = tuple(m.strip() for m in method.split(",") if m.strip())
    config = LoadConfig(
        methods=methods, horizons=_ints(horizon, "--horizon"), every=every, warmup=warmup, history=history,
        window=window, order=parse_order(order), arima_history=arima_history, arima_refit=arima_refit, phase=phase, bucket=bucket, seed=seed,
    )  # fmt: skip
    for name in methods:
        config.forecaster(name)  # unknown names fail here, before any work
    if (save or load) and (len(methods) != 1 or methods[0] not in ("mlp", "lstm")):
        raise InvalidArgumentError("--save and --load take exactly one --method, mlp or lstm")
    opened = open_trace(trace)
    train = open_trace(train_trace) if train_trace is not None else None
    if out is not None:
        if len(methods) != 1 or len(config.horizons) != 1:
            raise InvalidArgumentError("forecast mode (--out) takes one --method and one --horizon")
        steps, shares, layers = forecast_load(
            opened, methods[0], config.horizons[0], config, train_trace=train, load=load
        )
        import pyarrow.parquet as pq

        pq.write_table(forecast_table(steps, shares, layers), out)
        console.print(
            f"[green]forecast[/green] {len(steps):,} steps past step {steps[0] - 1} with {methods[0]} → [bold]{out}[/bold]"
        )
        return

    from moetrace.cli.progress import StageProgress

    with StageProgress("backtesting") as progress:
        result = backtest_load(opened, config, train_trace=train, load=load, progress=progress.update)
    if save is not None:
        save_forecaster(result.fitted[methods[0]], save, train or opened)
    if save_forecast is not None:
        import pyarrow.parquet as pq

        pq.write_table(backtest_table(result), save_forecast)
    if plot is not None:
        from moetrace.report.plots import plot_load_backtest

        plot_load_backtest(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.report.tables import load_backtest_renderable

    console.print(load_backtest_renderable(result, str(trace)))
    print_written((save, "model"), (save_forecast, "forecasts"), (plot, "figure"))


@predict_app.command("path")
@handle_errors
def path_command(
    trace: TraceArg,
    method: Annotated[
        str, typer.Option(help="Comma-separated: popularity, markov, mlp, pregate.")
    ] = "popularity,markov,mlp",
    lookahead: Annotated[str, typer.Option(help="Layers ahead to predict, one or several (comma-separated).")] = "1",
    split: Annotated[
        float, typer.Option(help="Share of sequences to train on; the rest, unseen, are the test set.")
    ] = 0.8,
    test_trace: Annotated[Path | None, typer.Option(help="Test on this trace instead (train on all of TRACE).")] = None,
    save: Annotated[
        Path | None, typer.Option(help="Save the fitted predictor (one method) for simulate and run --offload.")
    ] = None,
    load: Annotated[
        Path | None, typer.Option(help="Evaluate a predictor saved with --save instead of fitting one.")
    ] = None,
    train_steps: Annotated[int, typer.Option(help="Optimizer steps for the mlp predictor.")] = 3000,
    plot: Annotated[Path | None, typer.Option(help="PNG: recall per layer for each method and lookahead.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the mlp.")] = 0,
    json_output: Json = False,
) -> None:
    """Predict which experts a token will use some layers ahead; report recall@k on unseen sequences."""
    from moetrace.cli.progress import StageProgress
    from moetrace.errors import InvalidArgumentError
    from moetrace.predict.path import PathConfig, evaluate_paths, save_path_predictor
    from moetrace.predict.paths import make_path_predictor
    from moetrace.trace.reader import open_trace

    methods = tuple(m.strip() for m in method.split(",") if m.strip())
    config = PathConfig(methods=methods, lookaheads=_ints(lookahead, "--lookahead"), split=split, seed=seed)
    for name in methods:
        make_path_predictor(name)  # unknown names fail here, before any work
    if (save or load) and len(methods) != 1:
        raise InvalidArgumentError("--save and --load take exactly one --method")
    opened = open_trace(trace)
    test = open_trace(test_trace) if test_trace is not None else None
    with StageProgress("predicting paths") as progress:
        result = evaluate_paths(
            opened, config, test_trace=test, load=load, progress=progress.update,
            predictor_options={"mlp": {"train_steps": train_steps, "seed": seed}},
        )  # fmt: skip
    if save is not None:
        save_path_predictor(result.predictors[methods[0]], save, opened, config.lookaheads)
    if plot is not None:
        from moetrace.report.plots import plot_path_recall

        plot_path_recall(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.report.tables import path_renderable

    console.print(path_renderable(result, str(trace)))
    print_written((save, "predictor"), (plot, "figure"))

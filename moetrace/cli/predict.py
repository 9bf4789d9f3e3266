"""`moetrace predict load` and `moetrace predict path`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import (
    console,
    err_console,
    handle_errors,
    parse_ints,
    parse_names,
    print_json,
    print_written,
)
from moetrace.cli.options import Json, RayAddress, TraceArg

predict_app = typer.Typer(help="Forecast expert load and routing paths from traces.", no_args_is_help=True)


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
    ray: RayAddress = None,
    json_output: Json = False,
) -> None:
    """Forecast each expert's share of its layer's load: backtest methods, or forecast past the end (--out)."""
    from moetrace.parallel import executor_for
    from moetrace.predict.forecasters.arima import parse_order
    from moetrace.predict.load import LoadConfig, forecast_load_file, predict_load

    config = LoadConfig(
        methods=parse_names(method), horizons=parse_ints(horizon, "--horizon"), every=every, warmup=warmup,
        history=history, window=window, order=parse_order(order), arima_history=arima_history, arima_refit=arima_refit,
        phase=phase, bucket=bucket, seed=seed,
    )  # fmt: skip
    executor = executor_for(ray)
    if executor is not None:
        err_console.print(f"per-series fits on {executor.describe()}", highlight=False)
    if out is not None:
        forecast = forecast_load_file(trace, config, out, train_trace=train_trace, load=load, executor=executor)
        console.print(
            f"[green]forecast[/green] {len(forecast.steps):,} steps past step {forecast.steps[0] - 1} with "
            f"{forecast.method} → [bold]{forecast.path}[/bold]"
        )
        return
    from moetrace.cli.progress import StageProgress

    with StageProgress("backtesting") as progress:
        result = predict_load(trace, config, train_trace=train_trace, load=load, save=save,
                              save_forecasts=save_forecast, progress=progress.update, executor=executor)  # fmt: skip
    if plot is not None:
        from moetrace.report.plots import plot_load_backtest

        plot_load_backtest(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.cli.tables import load_backtest_renderable

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
    from moetrace.predict.path import PathConfig, predict_paths

    config = PathConfig(methods=parse_names(method), lookaheads=parse_ints(lookahead, "--lookahead"), split=split,
                        seed=seed, mlp_train_steps=train_steps)  # fmt: skip
    with StageProgress("predicting paths") as progress:
        result = predict_paths(trace, config, test_trace=test_trace, load=load, save=save, progress=progress.update)
    if plot is not None:
        from moetrace.report.plots import plot_path_recall

        plot_path_recall(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.cli.tables import path_renderable

    console.print(path_renderable(result, str(trace)))
    print_written((save, "predictor"), (plot, "figure"))

"""Expert-load forecasting: rolling-origin backtests and forecasts past the end of a trace."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError, MoetraceError
from moetrace.parallel import Executor
from moetrace.predict.forecasters import LoadForecaster, make_forecaster
from moetrace.predict.metrics import error_by_step, mae_pp, normalise, tvd
from moetrace.predict.series import LoadSeries, Phases, detect_phases, load_series
from moetrace.trace.reader import Trace

DEFAULT_METHODS = ("last", "mean", "window", "arima", "mlp", "lstm")

#: progress(units_done, units_total, description)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LoadConfig:
    """How load is forecast and backtested; saved beside the results."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Forecasting methods to compare: last, mean, window, arima, mlp, lstm."""
    horizons: tuple[int, ...] = (100,)
    """Steps ahead to forecast; each is backtested separately."""
    every: int | None = None
    """Steps between origins; by default about 10 origins for the shortest horizon."""
    warmup: int | None = None
    """Rows before the first origin; by default a fifth of the series."""
    history: int | None = None
    """At most this many rows before an origin are used to fit or average (None: all)."""
    window: int = 100
    """The `window` method's width, and the level the learned methods start from."""
    order: tuple[int, int, int] = (5, 1, 5)
    """ARIMA order (p, d, q)."""
    arima_history: int | None = 1000
    """ARIMA fits each series on at most this many steps before an origin."""
    arima_refit: bool = False
    """Refit ARIMA at every origin (else: fit at the first origin, then filter with those parameters)."""
    phase: str | None = None
    """Trace phase to read (prefill, decode, train); all when None."""
    bucket: int | None = None
    """Group consecutive steps until this many tokens were routed (for generation traces)."""
    seed: int = 0
    """Seed for the learned methods."""

    def __post_init__(self) -> None:
        from moetrace.predict.forecasters import method_names
        from moetrace.predict.forecasters.arima import parse_order
        from moetrace.trace.schema import PHASES

        if not self.methods:
            raise InvalidArgumentError("give at least one --method")
        unknown = [m for m in self.methods if m not in method_names()]
        if unknown:
            raise InvalidArgumentError(
                f"unknown load forecasting method {unknown[0]!r}; choose from {', '.join(method_names())}"
            )
        if not self.horizons or min(self.horizons) < 1:
            raise InvalidArgumentError(f"--horizon must be at least 1, got {list(self.horizons)}")
        for name, value in (("--every", self.every), ("--warmup", self.warmup), ("--history", self.history),
                            ("--window", self.window), ("--arima-history", self.arima_history), ("--bucket", self.bucket)):  # fmt: skip
            if value is not None and value < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, got {value}")
        if self.phase is not None and self.phase not in PHASES:
            raise InvalidArgumentError(f"--phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        parse_order(self.order)

    def forecaster(self, method: str, executor: Executor | None = None) -> LoadForecaster:
        """The forecaster for `method`; `executor` runs per-series fits (arima) instead of local processes."""
        options: dict[str, Any] = {"window": self.window}
        if method == "arima":
            options["order"] = self.order
            options["fit_window"] = self.arima_history
            options["refit"] = self.arima_refit
            options["executor"] = executor
        if method in ("mlp", "lstm"):
            options["seed"] = self.seed
        return make_forecaster(method, **options)


@dataclass
class LoadBacktest:
    """What `moetrace predict load` reports."""

    config: LoadConfig
    series: LoadSeries
    phases: Phases
    results: list[dict[str, Any]] = field(default_factory=list)
    """{method, horizon, phase, mae_pp, tvd, origins}: phase `all`, `transient`, `stable`."""
    origins: dict[int, np.ndarray] = field(default_factory=dict)
    error_by_step: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    forecasts: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    """(method, horizon) -> (n_origins, H, L, E) normalised forecasts."""
    notes: list[str] = field(default_factory=list)
    fitted: dict[str, LoadForecaster] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "phases": {
                "stable_start_step": int(self.series.steps[min(self.phases.stable_start, self.series.length - 1)]),
                "stable_start_row": self.phases.stable_start,
                "window": self.phases.window,
                "variance_threshold": self.phases.variance_threshold,
                "range_threshold": self.phases.spread_threshold,
                "rule": self.phases.describe(),
            },
            "origins": {str(h): self.series.steps[o].tolist() for h, o in self.origins.items()},
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()},
            "notes": self.notes,
        }


def origins_for(length: int, horizon: int, warmup: int, every: int | None) -> np.ndarray:
    if warmup + horizon > length:
        raise InvalidArgumentError(
            f"horizon {horizon} needs the warm-up ({warmup} steps) plus {horizon} steps; the series has {length} "
            f"(shorten --horizon or --warmup)"
        )
    last = length - horizon
    step = every or max(1, (last - warmup) // 9)
    return np.arange(warmup, last + 1, step)


def backtest_load(
    trace: Trace,
    config: LoadConfig,
    *,
    train_trace: Trace | None = None,
    load: str | Path | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> LoadBacktest:
    """Rolling-origin backtest of every method in `config` at every horizon.

    At each origin t a method sees rows before t (at most `history` of them) and forecasts rows
    t … t+H−1; mae_pp and tvd are averaged over those H rows, the layers and the origins, and
    reported for all origins and separately for origins in the transient and the stable phase.
    Learned methods are fitted on `train_trace`, or on the rows before the first origin. `executor`
    (`moetrace.parallel`, e.g. a Ray cluster) runs the per-series fits; the results do not depend on it.
    """
    series = load_series(trace, config.phase, config.bucket)
    shares = series.shares
    phases = detect_phases(shares)
    warmup = config.warmup if config.warmup is not None else max(1, series.length // 5)
    result = LoadBacktest(config=config, series=series, phases=phases)
    result.origins = {h: origins_for(series.length, h, warmup, config.every) for h in config.horizons}
    train_series = load_series(train_trace, config.phase, config.bucket).shares if train_trace is not None else None
    if train_series is not None and train_series.shape[1:] != shares.shape[1:]:
        raise InvalidArgumentError(
            f"--train-trace has {train_series.shape[1]} layers × {train_series.shape[2]} experts; "
            f"the trace has {shares.shape[1]} × {shares.shape[2]}"
        )
    units = len(config.methods) * len(config.horizons)
    done = 0
    for method in config.methods:
        forecaster = _load_forecaster(load, method) if load is not None else config.forecaster(method, executor)
        result.fitted[method] = forecaster
        shared = None
        if not forecaster.learned:
            # one forecast per origin at the longest horizon serves every horizon (its first H steps)
            union = np.unique(np.concatenate(list(result.origins.values())))
            if progress is not None:
                progress(done, units, f"{forecaster.describe()}, {len(union)} origins")
                forecaster.progress = _series_progress(progress, done, units, forecaster.describe())
            shared = union, _forecast(result, forecaster, shares, union, max(config.horizons), config.history)
        for horizon in config.horizons:
            if progress is not None:
                progress(done, units, f"{forecaster.describe()}, horizon {horizon}")
            origins = result.origins[horizon]
            if shared is not None:
                union, raw_all = shared
                raw = raw_all[np.searchsorted(union, origins), :horizon]
            else:
                if horizon not in getattr(forecaster, "models", {}):
                    forecaster.fit(train_series if train_series is not None else shares[: origins[0]], horizon)
                raw = _forecast(result, forecaster, shares, origins, horizon, config.history)
            predicted = normalise(raw)
            actual = np.stack([shares[o : o + horizon] for o in origins])
            result.forecasts[(method, horizon)] = predicted
            result.error_by_step[(method, horizon)] = error_by_step(predicted, actual)
            _add_rows(result, method, horizon, origins, predicted, actual)
            done += 1
    if progress is not None:
        progress(units, units, "done")
    return result


def _series_progress(progress: Progress, done: int, units: int, stage: str) -> Progress:
    """A forecaster's series done as the backtest's progress within its current unit."""
    return lambda series, total, where: progress(done, units, f"{stage}: {series:,} of {total:,} series")


def _forecast(
    result: LoadBacktest, forecaster: LoadForecaster, shares: np.ndarray, origins: np.ndarray, horizon: int,
    history: int | None,
) -> np.ndarray:  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = forecaster.forecast_origins(shares, origins, horizon, history)
    result.notes += [str(w.message) for w in caught]
    return raw


def _add_rows(
    result: LoadBacktest, method: str, horizon: int, origins: np.ndarray, predicted: np.ndarray, actual: np.ndarray
) -> None:
    labels = np.array([result.phases.phase_of(int(o)) for o in origins])
    for phase in ("all", "transient", "stable"):
        keep = np.ones(len(origins), bool) if phase == "all" else labels == phase
        if not keep.any():
            continue
        result.results.append(
            {
                "method": method,
                "horizon": horizon,
                "phase": phase,
                "mae_pp": mae_pp(predicted[keep], actual[keep]),
                "tvd": tvd(predicted[keep], actual[keep]),
                "origins": int(keep.sum()),
            }
        )


def _load_forecaster(path: str | Path, method: str) -> LoadForecaster:
    from moetrace.predict.forecasters.neural import _Neural

    forecaster = _Neural.load(path)
    if forecaster.name != method:
        raise InvalidArgumentError(f"--load {path} holds a {forecaster.name} forecaster, not {method}")
    return forecaster


def save_forecaster(forecaster: LoadForecaster, path: str | Path, trace: Trace) -> None:
    from moetrace.predict.forecasters.neural import _Neural

    if not isinstance(forecaster, _Neural):
        raise InvalidArgumentError(f"--save keeps mlp and lstm models; {forecaster.name} has nothing to save")
    from moetrace.predict.files import model_shape

    forecaster.save(path, {"model": model_shape(trace), "trace_hash": trace_hash(trace), "trained_on": str(trace.path)})


def trace_hash(trace: Trace) -> str:
    """A short hash of a trace's parts (names and sizes) and meta, to tell traces apart in saved files."""
    digest = hashlib.sha256()
    for part in trace.route_parts + trace.load_parts:
        digest.update(f"{part.name}:{part.stat().st_size}".encode())
    digest.update(repr(trace.meta.model).encode())
    return digest.hexdigest()[:16]


def forecast_load(
    trace: Trace, method: str, horizon: int, config: LoadConfig, *, train_trace: Trace | None = None,
    load: str | Path | None = None, executor: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:  # fmt: skip
    """Forecast `horizon` steps past the end of the trace: (steps, shares (H, L, E), layers)."""
    series = load_series(trace, config.phase, config.bucket)
    forecaster = _load_forecaster(load, method) if load is not None else config.forecaster(method, executor)
    if forecaster.learned and horizon not in getattr(forecaster, "models", {}):
        train = (
            load_series(train_trace, config.phase, config.bucket).shares if train_trace is not None else series.shares
        )
        forecaster.fit(train, horizon)
    shares = normalise(
        forecaster.forecast_origins(series.shares, np.array([series.length]), horizon, config.history)[0]
    )
    spacing = int(np.median(np.diff(series.steps))) if series.length > 1 else 1
    steps = series.steps[-1] + spacing * np.arange(1, horizon + 1)
    return steps, shares, series.layers


def forecast_table(steps: np.ndarray, shares: np.ndarray, layers: tuple[int, ...]) -> Any:
    """A long table (step, layer, expert, share) of a forecast."""
    import pyarrow as pa

    horizon, n_layers, experts = shares.shape
    return pa.table(
        {
            "step": pa.array(np.repeat(steps, n_layers * experts), pa.int32()),
            "layer": pa.array(np.tile(np.repeat(np.array(layers), experts), horizon), pa.int16()),
            "expert": pa.array(np.tile(np.arange(experts), horizon * n_layers), pa.int16()),
            "share": pa.array(shares.reshape(-1), pa.float32()),
        }
    )


def backtest_table(result: LoadBacktest) -> Any:
    """Every backtest forecast beside what happened: method, horizon, origin, step, layer, expert, share, actual."""
    import pyarrow as pa

    parts = []
    shares, steps, layers = result.series.shares, result.series.steps, np.array(result.series.layers)
    for (method, horizon), predicted in result.forecasts.items():
        origins = result.origins[horizon]
        n, h, n_layers, experts = predicted.shape
        rows = np.stack([np.arange(o, o + h) for o in origins])  # (n, H) series rows
        actual = shares[rows]
        per_cell = n_layers * experts
        parts.append(
            pa.table(
                {
                    "method": pa.array([method] * predicted.size).dictionary_encode(),
                    "horizon": pa.array(np.full(predicted.size, horizon), pa.int32()),
                    "origin": pa.array(np.repeat(steps[origins], h * per_cell), pa.int32()),
                    "step": pa.array(np.repeat(steps[rows].reshape(-1), per_cell), pa.int32()),
                    "layer": pa.array(np.tile(np.repeat(layers, experts), n * h), pa.int16()),
                    "expert": pa.array(np.tile(np.arange(experts), n * h * n_layers), pa.int16()),
                    "share": pa.array(predicted.reshape(-1), pa.float32()),
                    "actual": pa.array(actual.reshape(-1), pa.float32()),
                }
            )
        )
    if not parts:
        raise MoetraceError("the backtest made no forecasts")
    return pa.concat_tables(parts)


def predict_load(
    trace: Trace | str | Path,
    config: LoadConfig,
    *,
    train_trace: Trace | str | Path | None = None,
    load: str | Path | None = None,
    save: str | Path | None = None,
    save_forecasts: str | Path | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> LoadBacktest:
    """What `moetrace predict load` does: backtest `config`'s methods on `trace`; with `save`, keep the
    fitted mlp or lstm model (one method); with `save_forecasts`, write every backtest forecast beside
    the actual shares to a Parquet file (the configuration in its metadata). `executor` runs the
    per-series fits (`moetrace.parallel`: local processes by default, or a Ray cluster)."""
    _check_saved_model_options(config, save, load)
    if load is None:
        for method in config.methods:  # a bad method option is refused before the trace is read
            config.forecaster(method)
    opened, train = _open(trace), _open(train_trace) if train_trace is not None else None
    result = backtest_load(opened, config, train_trace=train, load=load, progress=progress, executor=executor)
    if save is not None:
        save_forecaster(result.fitted[config.methods[0]], save, train or opened)
    if save_forecasts is not None:
        write_parquet(backtest_table(result), save_forecasts, config)
    return result


@dataclass
class LoadForecast:
    """What `moetrace predict load --out` wrote."""

    path: Path
    method: str
    steps: np.ndarray
    layers: tuple[int, ...]


def forecast_load_file(
    trace: Trace | str | Path,
    config: LoadConfig,
    out: str | Path,
    *,
    train_trace: Trace | str | Path | None = None,
    load: str | Path | None = None,
    executor: Executor | None = None,
) -> LoadForecast:
    """Forecast `config`'s one horizon past the end of `trace` with its one method, into the Parquet
    file `out` (step, layer, expert, share; the configuration in its metadata)."""
    if len(config.methods) != 1 or len(config.horizons) != 1:
        raise InvalidArgumentError("forecast mode (--out) takes one --method and one --horizon")
    _check_saved_model_options(config, None, load)
    opened = _open(trace)
    train = _open(train_trace) if train_trace is not None else None
    method = config.methods[0]
    steps, shares, layers = forecast_load(
        opened, method, config.horizons[0], config, train_trace=train, load=load, executor=executor
    )
    write_parquet(forecast_table(steps, shares, layers), out, config)
    return LoadForecast(path=Path(out), method=method, steps=steps, layers=layers)


def _check_saved_model_options(config: LoadConfig, save: str | Path | None, load: str | Path | None) -> None:
    if (save or load) and (len(config.methods) != 1 or config.methods[0] not in ("mlp", "lstm")):
        raise InvalidArgumentError("--save and --load take exactly one --method, mlp or lstm")


def _open(trace: Trace | str | Path) -> Trace:
    from moetrace.trace.reader import open_trace

    return trace if isinstance(trace, Trace) else open_trace(trace)


def write_parquet(table: Any, path: str | Path, config: Any) -> None:
    """Write `table` to `path` with the resolved configuration that produced it in the file's metadata
    (key `moetrace.config`, JSON)."""
    import json

    import pyarrow.parquet as pq

    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    metadata = {**(table.schema.metadata or {}), b"moetrace.config": json.dumps(settings).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)

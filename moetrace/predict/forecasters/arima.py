"""`arima`: one ARIMA(p,d,q) per (layer, expert) series with statsmodels, one task per series.

The fits run on an executor (`moetrace.parallel`): spawned local processes by default, or a Ray
cluster; each series' fit is the same pure function wherever it runs, so the results are identical.

A series is fitted on at most `fit_window` steps before an origin and forecast H steps ahead. By
default it is fitted once, at the first origin, and later origins re-run its filter over their own
history with those parameters (no data after an origin is ever used); with `refit` it is refitted
at every origin, warm-started from the previous origin's parameters (several times slower). A fit that fails or does not
converge, or whose forecast leaves the history's range widened by that range on either side (an
explosive fit), falls back to the window forecast for that series and origin; the forecaster
counts them and warns once.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.parallel import Executor, LocalExecutor
from moetrace.predict.forecasters import LoadForecaster, register_forecaster
from moetrace.predict.forecasters.baselines import Window


def parse_order(order: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(order, str):
        try:
            parts = tuple(int(x) for x in order.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3:
            raise InvalidArgumentError(f"--order must be three integers p,d,q (e.g. 5,1,5), got {order!r}")
        order = parts  # type: ignore[assignment]
    p, d, q = order  # type: ignore[misc]
    if min(p, d, q) < 0 or d > 2:
        raise InvalidArgumentError(f"--order p,d,q must be non-negative with d ≤ 2, got {p},{d},{q}")
    return (p, d, q)


def min_history(order: tuple[int, int, int]) -> int:
    """Shortest history an ARIMA of this order is fitted on: a few observations per parameter."""
    p, d, q = order
    return 3 * (p + q + 1) + d + 10


@register_forecaster("arima")
class Arima(LoadForecaster):
    """ARIMA(p,d,q) per series (statsmodels), window fallback where a fit fails."""

    def __init__(
        self,
        order: str | tuple[int, int, int] = (5, 1, 5),
        window: int = 100,
        fit_window: int | None = 1000,
        refit: bool = False,
        workers: int | None = None,
        executor: Executor | None = None,
        **options: Any,
    ) -> None:
        self.order = parse_order(order)
        if fit_window is not None and fit_window < min_history(self.order):
            raise InvalidArgumentError(
                f"--arima-history {fit_window} is too short for ARIMA{self.order}: it needs {min_history(self.order)}"
            )
        super().__init__(order=self.order, window=window, fit_window=fit_window, refit=refit, **options)
        self.fit_window, self.refit = fit_window, refit
        self.fallback = Window(window=window)
        self.executor = executor or LocalExecutor(workers, processes=True)
        self.failed = 0
        self.constant = 0
        self.fits = 0

    def describe(self) -> str:
        p, d, q = self.order
        return f"arima ({p},{d},{q})"

    def forecast(self, history: np.ndarray, horizon: int) -> np.ndarray:
        return self.forecast_origins(history, np.array([len(history)]), horizon, None)[0]

    def forecast_origins(
        self, series: np.ndarray, origins: np.ndarray, horizon: int, history: int | None
    ) -> np.ndarray:
        shortest = int(origins.min()) if history is None else min(int(origins.min()), history)
        if shortest < min_history(self.order):
            p, d, q = self.order
            raise InvalidArgumentError(
                f"ARIMA({p},{d},{q}) needs at least {min_history(self.order)} steps of history before each origin; "
                f"the first origin has {shortest} (use a longer warm-up or --history, or a smaller --order)"
            )
        length, layers, experts = series.shape
        columns = series.reshape(length, -1)
        limit = history if self.fit_window is None else min(history or self.fit_window, self.fit_window)
        jobs = [(columns[:, s], origins, horizon, limit, self.order, self.refit) for s in range(columns.shape[1])]
        out = self.fallback.forecast_origins(series, origins, horizon, history)
        flat = out.reshape(len(origins), horizon, -1)
        results = self.executor.map(_fit_series, jobs, progress=self.progress)
        failed = constant = 0
        for s, (forecasts, ok, flat_series) in enumerate(results):
            constant += flat_series
            failed += int((~ok).sum()) - flat_series
            flat[ok, :, s] = forecasts[ok]
        self.failed += failed
        self.constant += constant
        self.fits += len(jobs) * len(origins)
        if failed:
            warnings.warn(
                f"ARIMA{self.order} failed to converge or diverged on {failed} of {len(jobs) * len(origins)} series "
                f"forecasts; those forecast with window (w={self.fallback.window})",
                stacklevel=2,
            )
        return out


def _fit_series(job: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit one series at every origin: (forecasts (n, H), converged (n,), origins where it was constant)."""
    column, origins, horizon, history, order, refit = job
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.arima.model import ARIMA

    forecasts = np.zeros((len(origins), horizon))
    ok = np.zeros(len(origins), bool)
    constant = 0
    fitted = None
    for i, origin in enumerate(origins):
        y = column[(0 if history is None else max(0, origin - history)) : origin]
        if np.ptp(y) < 1e-12:  # a constant series: its forecast is that constant (ARIMA cannot fit it)
            forecasts[i] = y[-1]
            ok[i] = True
            constant += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # statsmodels' EstimationWarning on starting parameters
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                if fitted is not None and not refit:
                    result = fitted.apply(y)  # the same parameters, filtered over this origin's history
                else:
                    # unconstrained parameters fit several times faster; a forecast that diverges is refused below
                    model = ARIMA(y, order=order, enforce_stationarity=False, enforce_invertibility=False)
                    start = None if fitted is None else fitted.params
                    result = model.fit(start_params=start, cov_type="none", method_kwargs={"maxiter": 200})
                prediction = result.forecast(horizon)
            except (ConvergenceWarning, ValueError, np.linalg.LinAlgError, IndexError):
                continue
        low, high = y.min(), y.max()
        spread = high - low
        if np.all(np.isfinite(prediction)) and prediction.min() >= low - spread and prediction.max() <= high + spread:
            forecasts[i] = prediction
            ok[i] = True
            fitted = result
    return forecasts, ok, constant

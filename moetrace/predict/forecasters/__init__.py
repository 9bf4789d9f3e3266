"""Load forecasters: one registry, one module per family of methods.

A forecaster turns the share history before an origin into the next H steps' shares. The backtest
asks for many origins at once (`forecast_origins`), which the simple methods answer with
vectorised numpy and the others with a loop over `forecast`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from moetrace.errors import InvalidArgumentError

FORECASTERS: dict[str, type[LoadForecaster]] = {}


def register_forecaster(name: str) -> Callable[[type[LoadForecaster]], type[LoadForecaster]]:
    def decorator(cls: type[LoadForecaster]) -> type[LoadForecaster]:
        cls.name = name
        FORECASTERS[name] = cls
        return cls

    return decorator


class LoadForecaster:
    """Forecasts (H, L, E) shares from a (T, L, E) history. Subclasses implement `forecast`."""

    name: ClassVar[str] = ""
    learned: ClassVar[bool] = False
    """Learned methods are fitted on a training series before they forecast."""
    progress: Callable[[int, int, str], None] | None = None
    """Called with (series done, series total, where they run) by forecasters that fit series one by one."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def fit(self, train: np.ndarray, horizon: int) -> None:
        """Learn from a (T, L, E) training series for forecasts `horizon` steps ahead (learned methods)."""

    def forecast(self, history: np.ndarray, horizon: int) -> np.ndarray:
        raise NotImplementedError

    def forecast_origins(
        self, series: np.ndarray, origins: np.ndarray, horizon: int, history: int | None
    ) -> np.ndarray:
        """(n_origins, H, L, E): the forecast made at each origin from the rows before it."""
        out = np.empty((len(origins), horizon, *series.shape[1:]))
        for i, origin in enumerate(origins):
            start = 0 if history is None else max(0, origin - history)
            out[i] = self.forecast(series[start:origin], horizon)
        return out

    def describe(self) -> str:
        return self.name


def make_forecaster(name: str, **options: Any) -> LoadForecaster:
    from moetrace.predict.forecasters import arima, baselines, neural  # noqa: F401  (registration)

    if name not in FORECASTERS:
        raise InvalidArgumentError(f"unknown load forecasting method {name!r}; choose from {', '.join(method_names())}")
    return FORECASTERS[name](**options)


def method_names() -> list[str]:
    from moetrace.predict.forecasters import arima, baselines, neural  # noqa: F401

    return list(FORECASTERS)

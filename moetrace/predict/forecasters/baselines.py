"""`last`, `mean` and `window` (the seed paper's SW_Avg): a mean over each origin's window."""

from __future__ import annotations

from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.predict.forecasters import LoadForecaster, register_forecaster


def _windowed_means(series: np.ndarray, origins: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of series[origin − length : origin] for each origin: (n, L, E), without a copy of the
    series (it can be gigabytes): a sum per origin where the windows are short, else running sums
    over the ascending origins, each row added once."""
    starts = np.maximum(origins - lengths, 0)
    out = np.empty((len(origins), *series.shape[1:]))
    ascending = bool(np.all(np.diff(origins) >= 0) and np.all(np.diff(starts) >= 0))
    if not ascending or int((origins - starts).sum()) <= 4 * len(series):
        for i, (start, origin) in enumerate(zip(starts, origins)):
            out[i] = series[start:origin].mean(axis=0)
        return out
    to_origin, to_start = np.zeros(series.shape[1:]), np.zeros(series.shape[1:])
    at_origin = at_start = 0
    for i, (start, origin) in enumerate(zip(starts, origins)):
        to_origin += series[at_origin:origin].sum(axis=0)
        to_start += series[at_start:start].sum(axis=0)
        at_origin, at_start = origin, start
        out[i] = (to_origin - to_start) / (origin - start)
    return out


class _Constant(LoadForecaster):
    """Carries one level forward: the mean of the last `span` rows before the origin."""

    def span(self, available: int) -> int:
        raise NotImplementedError

    def forecast(self, history: np.ndarray, horizon: int) -> np.ndarray:
        level = history[-self.span(len(history)) :].mean(axis=0)
        return np.broadcast_to(level, (horizon, *level.shape)).copy()

    def forecast_origins(
        self, series: np.ndarray, origins: np.ndarray, horizon: int, history: int | None
    ) -> np.ndarray:
        available = origins if history is None else np.minimum(origins, history)
        spans = np.array([self.span(int(a)) for a in available])
        level = _windowed_means(series, origins, spans)
        return np.broadcast_to(level[:, None], (len(origins), horizon, *series.shape[1:])).copy()


@register_forecaster("last")
class Last(_Constant):
    """The last observed shares, carried forward."""

    def span(self, available: int) -> int:
        return 1


@register_forecaster("mean")
class Mean(_Constant):
    """The mean of all history (or of `--history` steps), carried forward."""

    def span(self, available: int) -> int:
        return available


@register_forecaster("window")
class Window(_Constant):
    """The mean of the last `window` steps, carried forward (sliding-window average)."""

    def __init__(self, window: int = 100, **options: Any) -> None:
        if window < 1:
            raise InvalidArgumentError(f"--window must be at least 1, got {window}")
        super().__init__(window=window, **options)
        self.window = window

    def span(self, available: int) -> int:
        return min(self.window, available)

    def describe(self) -> str:
        return f"window (w={self.window})"

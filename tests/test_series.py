"""Phase detection's windowed statistics in bounded memory equal the plain sliding-window ones."""

from __future__ import annotations

import numpy as np
import pytest

from moetrace.predict.series import _windowed_means, detect_phases


@pytest.mark.parametrize(("steps", "series", "window"), [(50, 7, 5), (300, 600, 30), (40, 3, 40), (101, 10, 6)])
def test_windowed_variance_and_range_equal_a_sliding_window_over_every_series(steps, series, window) -> None:  # type: ignore[no-untyped-def]
    flat = np.random.default_rng(steps).dirichlet(np.ones(series), size=steps)
    windows = [flat[t - window + 1 : t + 1] for t in range(window - 1, steps)]  # each window ends at its row
    variance = [w.var(axis=0).mean() for w in windows]
    spread = [(w.max(axis=0) - w.min(axis=0)).mean() for w in windows]
    got_variance, got_spread = _windowed_means(flat, window, block=4)
    np.testing.assert_allclose(got_variance, variance, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got_spread, spread, rtol=1e-12, atol=1e-15)


def test_a_noisy_start_then_calm_load_is_split_where_it_settles() -> None:
    rng = np.random.default_rng(0)
    calm = np.full((400, 2, 8), 1 / 8) + rng.normal(0, 1e-4, (400, 2, 8))
    noisy = rng.dirichlet(np.ones(8), size=(100, 2))
    phases = detect_phases(np.concatenate([noisy, calm]), window=10)
    assert 100 <= phases.stable_start <= 110


@pytest.mark.parametrize("span", ["short", "all", "capped"])
def test_baselines_window_means_equal_plain_means_of_each_window(span) -> None:  # type: ignore[no-untyped-def]
    from moetrace.predict.forecasters.baselines import _windowed_means

    series = np.random.default_rng(1).random((500, 3, 4))
    origins = np.arange(50, 500, 7)
    lengths = {"short": np.full(len(origins), 10), "all": origins.copy(), "capped": np.minimum(origins, 300)}[span]
    expected = np.stack([series[max(o - n, 0) : o].mean(axis=0) for o, n in zip(origins, lengths)])
    np.testing.assert_allclose(_windowed_means(series, origins, lengths), expected, rtol=1e-12)

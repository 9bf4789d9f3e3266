"""`moetrace predict load`: forecasters against hand-computed and synthetic truths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_cli import assert_one_error_line, run

import moetrace
from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.predict.forecasters import make_forecaster
from moetrace.predict.load import LoadConfig, backtest_load
from moetrace.predict.metrics import mae_pp, normalise, tvd
from moetrace.predict.series import detect_phases, load_series
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.writer import TraceWriter

EXAMPLE_TRAIN = Path(__file__).resolve().parents[1] / "traces" / "examples" / "train"


def write_load_trace(path: Path, counts: np.ndarray, top_k: int = 1) -> moetrace.Trace:
    """A training trace whose load is `counts` (steps, layers, experts)."""
    steps, layers, experts = counts.shape
    info = ModelInfo(num_experts=experts, top_k=top_k, moe_layers=tuple(range(layers)))
    with TraceWriter(path, TraceMeta.new(info, {"mode": "train"})) as writer:
        for step in range(steps):
            layer, expert = np.nonzero(counts[step])
            writer.write_load(step=step, phase="train", layer=layer, expert=expert, tokens=counts[step, layer, expert])
    return moetrace.open_trace(path)


def shares_to_counts(shares: np.ndarray, tokens: int = 100_000) -> np.ndarray:
    return np.round(shares * tokens).astype(np.int64)


def test_window_equals_a_hand_computed_example() -> None:
    history = np.array([[0.5, 0.5], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])[:, None, :]
    window = make_forecaster("window", window=2)
    forecast = window.forecast(history[:4], 3)
    np.testing.assert_allclose(forecast[:, 0], [[0.4, 0.6]] * 3)  # mean of rows 2 and 3
    many = window.forecast_origins(history, np.array([2, 4, 6]), 2, None)
    np.testing.assert_allclose(many[:, 0, 0], [[0.6, 0.4], [0.4, 0.6], [0.35, 0.65]])
    np.testing.assert_allclose(make_forecaster("last").forecast(history[:3], 1)[0, 0], [0.6, 0.4])
    np.testing.assert_allclose(make_forecaster("mean").forecast(history[:3], 1)[0, 0], [0.6, 0.4])
    # --history 2 limits mean to the last two rows
    np.testing.assert_allclose(
        make_forecaster("mean").forecast_origins(history, np.array([4]), 1, 2)[0, 0, 0], [0.4, 0.6]
    )


def test_metrics_on_known_arrays() -> None:
    predicted = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.1, 0.8]]])
    actual = np.array([[[0.4, 0.4, 0.2]], [[0.1, 0.3, 0.6]]])
    # |differences|: 0.1 0.1 0 | 0 0.2 0.2 -> mean 0.1 = 10 pp; tvd: (0.2/2 + 0.4/2) / 2 = 0.15
    assert mae_pp(predicted, actual) == pytest.approx(10.0)
    assert tvd(predicted, actual) == pytest.approx(0.15)
    clipped = normalise(np.array([[0.5, -0.5, 1.5], [-1.0, -2.0, -3.0]]))
    np.testing.assert_allclose(clipped, [[0.25, 0.0, 0.75], [1 / 3, 1 / 3, 1 / 3]])


def test_arima_recovers_an_ar2_process() -> None:
    phi1, phi2, mu = 0.6, -0.3, 0.5
    rng = np.random.default_rng(0)
    x = np.zeros(1200)
    for t in range(2, len(x)):
        x[t] = phi1 * x[t - 1] + phi2 * x[t - 2] + rng.normal(scale=0.02)
    history = np.stack([mu + x, 1 - mu - x], axis=1)[:, None, :]  # one layer, two experts
    forecast = make_forecaster("arima", order="2,0,0", workers=1).forecast(history, 10)
    # the true process's conditional expectation from the last two values
    expected, a, b = [], x[-1], x[-2]
    for _ in range(10):
        a, b = phi1 * a + phi2 * b, a
        expected.append(mu + a)
    np.testing.assert_allclose(forecast[:, 0, 0], expected, atol=0.004)


def test_mlp_beats_mean_on_a_periodic_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    steps = np.arange(1500)
    wave = 0.15 * np.sin(2 * np.pi * steps / 40)
    rng = np.random.default_rng(1)
    first = 0.5 + wave + rng.normal(scale=0.01, size=len(steps))
    shares = np.stack([first, 1 - first], axis=1)[:, None, :]
    trace = write_load_trace(tmp_path / "t", shares_to_counts(shares))
    result = backtest_load(trace, LoadConfig(methods=("mean", "window", "mlp"), horizons=(20,), warmup=1000, every=23))
    error = {r["method"]: r["mae_pp"] for r in result.results if r["phase"] == "all"}
    assert error["mlp"] < 0.5 * error["mean"]
    assert error["mlp"] < error["window"]


def test_every_forecast_is_a_distribution_per_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 50, size=(400, 2, 4))
    counts[:, 1, 3] = 0  # an expert that is never used: a constant series
    trace = write_load_trace(tmp_path / "t", counts)
    config = LoadConfig(horizons=(10, 30), order=(1, 1, 1), warmup=200, every=40)
    result = backtest_load(trace, config)
    assert {r["method"] for r in result.results} == set(config.methods)
    for forecast in result.forecasts.values():
        assert (forecast >= 0).all()
        np.testing.assert_allclose(forecast.sum(axis=-1), 1.0)


def test_phases_split_a_settling_series() -> None:
    rng = np.random.default_rng(3)
    noisy = 0.5 + rng.normal(scale=0.1, size=300)
    calm = 0.5 + rng.normal(scale=0.005, size=700)
    first = np.concatenate([noisy, calm])
    phases = detect_phases(np.stack([first, 1 - first], axis=1)[:, None, :])
    assert 300 <= phases.stable_start <= 330


def test_bucketing_groups_decode_steps_until_n_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    counts = np.zeros((10, 1, 2), np.int64)
    counts[:, 0, 0] = [8, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # a prefill of 8 tokens, then decode steps of 1
    trace = write_load_trace(tmp_path / "t", counts)
    series = load_series(trace, bucket=4)
    np.testing.assert_array_equal(series.steps, [0, 1, 5, 9])
    np.testing.assert_array_equal(series.tokens[:, 0], [8, 4, 4, 1])


def test_bad_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    counts = np.random.default_rng(4).integers(1, 9, size=(200, 1, 3))
    trace = write_load_trace(tmp_path / "t", counts)
    with pytest.raises(InvalidArgumentError, match="horizon 500 needs the warm-up"):
        backtest_load(trace, LoadConfig(methods=("window",), horizons=(500,)))
    with pytest.raises(InvalidArgumentError, match="unknown load forecasting method 'prophet'"):
        backtest_load(trace, LoadConfig(methods=("prophet",)))
    with pytest.raises(InvalidArgumentError, match=r"ARIMA\(30,1,30\) needs at least 194 steps of history"):
        backtest_load(trace, LoadConfig(methods=("arima",), order=(30, 1, 30), horizons=(10,)))
    empty = write_load_trace(tmp_path / "empty", np.zeros((0, 1, 3), np.int64))
    with pytest.raises(TraceFormatError, match="holds no load"):
        backtest_load(empty, LoadConfig(methods=("window",)))


def test_cli_backtest_json_plot_and_forecast(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("predict", "load", EXAMPLE_TRAIN, "--method", "last,mean,window", "--horizon", "50,200", "--json",
                 "--plot", tmp_path / "p.png", "--save-forecast", tmp_path / "f.parquet")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = summary["results"]
    assert {(r["method"], r["horizon"]) for r in rows if r["phase"] == "all"} == {
        (m, h) for m in ("last", "mean", "window") for h in (50, 200)
    }
    assert all(0 <= r["tvd"] <= 1 and r["mae_pp"] >= 0 for r in rows)
    assert {"stable"} <= {r["phase"] for r in rows}
    assert (tmp_path / "p.png").exists()
    saved = pq.read_table(tmp_path / "f.parquet")
    assert set(saved.column_names) >= {"method", "horizon", "origin", "step", "layer", "expert", "share", "actual"}
    out = tmp_path / "forecast.parquet"
    result = run("predict", "load", EXAMPLE_TRAIN, "--method", "window", "--horizon", 300, "--out", out)
    assert result.exit_code == 0, result.output
    forecast = pq.read_table(out).to_pandas()
    assert forecast.step.min() == 2000 and forecast.step.max() == 2299
    np.testing.assert_allclose(forecast.groupby(["step", "layer"]).share.sum(), 1.0, rtol=1e-5)
    result = run("predict", "load", EXAMPLE_TRAIN, "--method", "window", "--horizon", 100)
    assert result.exit_code == 0 and "stable phase" in result.stdout


def test_cli_saved_mlp_loads_and_predicts_the_same(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = ["--method", "mlp", "--horizon", 50, "--warmup", 600, "--json"]
    first = run("predict", "load", EXAMPLE_TRAIN, *options, "--save", tmp_path / "m.pt")
    assert first.exit_code == 0, first.output
    second = run("predict", "load", EXAMPLE_TRAIN, *options, "--load", tmp_path / "m.pt")
    assert second.exit_code == 0, second.output
    assert json.loads(first.stdout)["results"] == json.loads(second.stdout)["results"]


def test_cli_bad_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert_one_error_line(
        run("predict", "load", EXAMPLE_TRAIN, "--method", "prophet"), "unknown load forecasting method"
    )
    assert_one_error_line(run("predict", "load", EXAMPLE_TRAIN, "--horizon", 5000), "horizon 5000 needs")
    assert_one_error_line(run("predict", "load", EXAMPLE_TRAIN, "--method", "arima", "--order", "5,1"), "--order")
    assert_one_error_line(run("predict", "load", tmp_path / "nothing"), "does not exist")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    result = run("predict", "load", EXAMPLE_TRAIN, "--method", "mlp", "--load", tmp_path / "bad.pt")
    assert_one_error_line(result, "not a saved moetrace load forecaster")

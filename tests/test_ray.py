"""Scale-out on Ray: a real local instance with 2 CPUs gives the local results exactly."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run
from test_predict_load import write_load_trace

import moetrace
from moetrace.errors import InvalidArgumentError, MoetraceError
from moetrace.parallel import LocalExecutor, RayExecutor, executor_for
from moetrace.predict.load import LoadConfig, backtest_load
from moetrace.sim.simulate import SimConfig, simulate

ray = pytest.importorskip("ray", reason="Ray is the optional extra moetrace[ray] (make install takes it)")

GOLDEN = Path(__file__).resolve().parents[1] / "traces" / "golden" / "demo-generate"


def test_an_unreachable_cluster_or_a_missing_ray_is_one_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # first in the module, before its instance starts: a process that joined an instance reuses it
    assert not ray.is_initialized()
    assert_one_error_line(run("simulate", GOLDEN, "--ray", "127.0.0.1:1"), "cannot reach a Ray cluster at 127.0.0.1:1")
    assert_one_error_line(run("predict", "load", GOLDEN, "--method", "window", "--ray", "127.0.0.1:1"), "ray start")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(MoetraceError, match=re.escape("install the ray extra: pip install 'moetrace[ray]'")):
        executor_for("local")
    assert executor_for(None) is None and isinstance(executor_for(None, 3), LocalExecutor)


@pytest.fixture(scope="module")
def on_ray():  # type: ignore[no-untyped-def]
    """One local Ray instance with 2 CPUs for the module."""
    with RayExecutor("local", cpus=2) as executor:
        yield executor


def test_map_keeps_the_input_order_and_reports_progress(on_ray) -> None:  # type: ignore[no-untyped-def]
    offset = np.arange(5)  # carried in the function's closure, through the object store
    seen: list[tuple[int, int]] = []
    results = on_ray.map(lambda i: int(offset[i % 5]) * 10 + i, range(12), progress=lambda d, n, _: seen.append((d, n)))
    assert results == [(i % 5) * 10 + i for i in range(12)]
    assert seen[-1] == (12, 12) and all(n == 12 for _, n in seen)
    assert on_ray.workers == 2 and "2 CPUs" in on_ray.describe()


def test_a_task_error_is_raised_as_the_local_run_raises_it(on_ray) -> None:  # type: ignore[no-untyped-def]
    def check(i: int) -> int:
        if i == 3:
            raise InvalidArgumentError(f"item {i} is bad")
        return i

    with pytest.raises(InvalidArgumentError, match="^item 3 is bad$"):
        on_ray.map(check, range(6))
    with pytest.raises(InvalidArgumentError, match="^item 3 is bad$"):
        LocalExecutor(2).map(check, range(6))


def test_arima_backtest_on_ray_equals_the_local_run(tmp_path, on_ray) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 50, size=(260, 2, 3))  # six series
    trace = write_load_trace(tmp_path / "t", counts)
    config = LoadConfig(methods=("arima", "window"), horizons=(10,), order=(1, 1, 1), warmup=200, every=20)
    local = backtest_load(trace, config, executor=LocalExecutor(1))
    remote = backtest_load(trace, config, executor=on_ray)
    assert remote.results == local.results
    for key, forecast in local.forecasts.items():
        np.testing.assert_array_equal(remote.forecasts[key], forecast)
    assert remote.fitted["arima"].fits == local.fitted["arima"].fits == 6 * 3  # type: ignore[attr-defined]


def test_simulate_sweep_on_ray_equals_the_local_run(on_ray) -> None:  # type: ignore[no-untyped-def]
    trace = moetrace.open_trace(GOLDEN)
    config = SimConfig(policies=("lru", "fifo"), capacities=(2, 4))
    local = simulate(trace, config)
    remote = simulate(trace, config, executor=on_ray)
    assert remote.results == local.results
    assert [(r["policy"], r["capacity"]) for r in remote.results] == [("lru", 2), ("lru", 4), ("fifo", 2), ("fifo", 4)]


def test_cli_backtest_with_ray_local_equals_the_local_run(tmp_path, on_ray) -> None:  # type: ignore[no-untyped-def]
    counts = np.random.default_rng(8).integers(0, 50, size=(260, 1, 2))
    write_load_trace(tmp_path / "t", counts)
    args = ("predict", "load", tmp_path / "t", "--method", "arima,last", "--order", "1,1,1", "--horizon", "10",
            "--warmup", "200", "--every", "25", "--json")  # fmt: skip
    local, remote = run(*args), run(*args, "--ray", "local")  # `local` joins the module's instance
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["results"] == json.loads(local.stdout)["results"]
    assert "per-series fits on a local Ray instance (2 CPUs)" in remote.stderr

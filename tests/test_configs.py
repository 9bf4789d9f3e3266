"""Configurations: every field documented, and the resolved configuration saved beside what it produced."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from moetrace.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"


def _configs() -> list[type]:
    from moetrace.offload.run import RunConfig
    from moetrace.offload.runtime import OffloadConfig
    from moetrace.predict.load import LoadConfig
    from moetrace.predict.path import PathConfig
    from moetrace.trace.record import RecordConfig

    configs: list[type] = [LoadConfig, PathConfig, RunConfig, OffloadConfig, RecordConfig]
    try:
        from moetrace.train.loop import TrainConfig
    except ImportError:  # before the training package moved
        from moetrace.trace.train import TrainConfig  # type: ignore[no-redef]
    return [*configs, TrainConfig]


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(config: type) -> None:
    source = inspect.getsource(inspect.getmodule(config))  # type: ignore[arg-type]
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == config.__name__).body
    undocumented = [
        node.target.id
        for node, following in zip(body, [*body[1:], None])
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if not (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant))
    ]
    assert not undocumented, f"{config.__name__}: no docstring for {undocumented}"


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c.__name__)
def test_configs_are_frozen(config: type) -> None:
    assert config.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_predict_load_writes_its_config_beside_its_forecasts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "forecast.parquet"
    args = ["predict", "load", str(EXAMPLES / "train"), "--method", "window", "--horizon", "10", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads(pq.read_schema(out).metadata[b"moetrace.config"])
    assert config["methods"] == ["window"] and config["horizons"] == [10]


def test_predict_json_holds_the_resolved_config() -> None:
    args = ["predict", "path", str(EXAMPLES / "generate"), "--method", "markov", "--lookahead", "1,2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["lookaheads"] == [1, 2]

"""Predictor files: safetensors plus a JSON header; pickles, foreign and damaged files are refused unread."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from test_cli import assert_one_error_line, run
from test_predict_load import EXAMPLE_TRAIN, write_load_trace

import moetrace
from moetrace.errors import PredictorFileError
from moetrace.predict.files import FORMAT_VERSION, HEADER_KEY
from moetrace.predict.forecasters import make_forecaster
from moetrace.predict.forecasters.neural import _Neural
from moetrace.predict.load import save_forecaster
from moetrace.predict.path import load_path_predictor, save_path_predictor
from moetrace.predict.paths import make_path_predictor, path_method_names
from moetrace.predict.paths.data import PathData, path_data
from moetrace.trace.importer import import_routes

GOLDEN = Path(__file__).resolve().parents[1] / "traces" / "golden" / "demo-generate"
OPTIONS = {"mlp": {"train_steps": 20, "hidden": 16, "batch": 64, "token_buckets": 64, "context": 2}}


@pytest.fixture(scope="module")
def text_trace(tmp_path_factory):  # type: ignore[no-untyped-def]
    """An imported trace of 3 MoE layers × 6 experts, top-2, whose tokens are texts (a vocabulary is built)."""
    rng = np.random.default_rng(0)
    words = ["Hello", " world", "é", "日本", "\n", ""]
    rows: dict[str, list] = {"seq_id": [], "pos": [], "layer": [], "experts": [], "token": []}
    for seq in range(8):
        for pos in range(6):
            token = words[int(rng.integers(len(words)))]
            for layer in (1, 3, 4):
                rows["seq_id"].append(seq)
                rows["pos"].append(pos)
                rows["layer"].append(layer)
                rows["experts"].append(rng.choice(6, 2, replace=False).tolist())
                rows["token"].append(token)
    folder = tmp_path_factory.mktemp("text")
    pq.write_table(pa.table(rows), folder / "routes.parquet")
    return import_routes(folder / "routes.parquet", folder / "t", num_experts=6)


def _with_pregate(data: PathData) -> PathData:
    pregate = np.random.default_rng(1).integers(0, data.num_experts, data.experts.shape)
    return dataclasses.replace(data, pregate=pregate)


@pytest.mark.parametrize("method", path_method_names())
def test_every_path_method_round_trips(method, text_trace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _with_pregate(path_data(text_trace))
    assert data.vocabulary is not None
    predictor = make_path_predictor(method, **OPTIONS.get(method, {}))
    lookaheads = (1,) if predictor.max_lookahead == 1 else (1, 2)
    predictor.fit(data, lookaheads)
    file = tmp_path / f"{method}.safetensors"
    save_path_predictor(predictor, file, text_trace, lookaheads)
    loaded = load_path_predictor(file, text_trace)
    assert (loaded.name, loaded.options, loaded.lookaheads) == (method, predictor.options, lookaheads)
    assert (loaded.layers, loaded.num_experts, loaded.top_k) == ((1, 3, 4), 6, 2)
    assert loaded.vocabulary == predictor.vocabulary
    for d in lookaheads:
        for source in range(3 - d):
            np.testing.assert_array_equal(loaded.predict(data, source, d), predictor.predict(data, source, d))
            np.testing.assert_array_equal(loaded.scores(data, source, d), predictor.scores(data, source, d))
    with safe_open(str(file), framework="numpy") as opened:
        header = json.loads(opened.metadata()[HEADER_KEY])
    assert header["format"] == "moetrace-predictor" and header["format_version"] == FORMAT_VERSION
    assert header["kind"] == "path-predictor" and header["method"] == method
    assert header["moetrace_version"] == moetrace.__version__
    shape = {"moe_layers": [1, 3, 4], "num_experts": 6, "top_k": 2, "vocabulary_size": len(predictor.vocabulary)}
    assert header["model"] == {"name": text_trace.meta.model.name, **shape}
    assert header["lookaheads"] == list(lookaheads) and header["options"] == predictor.options


def test_a_trace_with_token_ids_saves_no_vocabulary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = moetrace.open_trace(GOLDEN)
    data = path_data(trace)
    markov = make_path_predictor("markov", smoothing=0.5)
    markov.fit(data, (1, 3))
    save_path_predictor(markov, tmp_path / "m.safetensors", trace, (1, 3))
    loaded = load_path_predictor(tmp_path / "m.safetensors", trace)
    assert loaded.vocabulary is None and loaded.options == {"smoothing": 0.5}
    assert set(load_file(tmp_path / "m.safetensors")) == {"tables.1", "tables.3"}
    for d in (1, 3):
        np.testing.assert_array_equal(loaded.scores(data, 0, d), markov.scores(data, 0, d))


class _Armed:
    """Unpickling this creates `marker`: what a hostile predictor file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _pickles(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "marker"
    armed = {"kind": "moetrace-path-predictor", "state": _Armed(marker)}
    torch.save(armed, tmp_path / "torch.pt")
    with open(tmp_path / "plain.safetensors", "wb") as file:
        pickle.dump(armed, file)
    with open(tmp_path / "old.pkl", "wb") as file:
        pickle.dump(armed, file, protocol=2)
    return marker, [tmp_path / "torch.pt", tmp_path / "plain.safetensors", tmp_path / "old.pkl"]


def test_a_pickle_is_refused_and_never_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker, files = _pickles(tmp_path)
    for file in files:
        with pytest.raises(PredictorFileError, match="it is a pickle"):
            load_path_predictor(file)
        with pytest.raises(PredictorFileError, match="it is a pickle"):
            _Neural.load(file)
        assert not marker.exists()
    pickle.loads(files[1].read_bytes())  # the files are armed: unpickling one does create the marker
    assert marker.exists()


def test_cli_refuses_a_pickle_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker, files = _pickles(tmp_path)
    for file in files[:2]:
        result = run("predict", "path", GOLDEN, "--method", "markov", "--load", file)
        assert_one_error_line(result, "is not a saved moetrace path predictor: it is a pickle")
        result = run("predict", "load", EXAMPLE_TRAIN, "--method", "mlp", "--load", file)
        assert_one_error_line(result, "is not a saved moetrace load forecaster: it is a pickle")
    assert not marker.exists()


def test_foreign_truncated_and_newer_files_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = {"weight": np.ones((4, 4), np.float32)}
    save_file(weights, tmp_path / "plain.safetensors")
    save_file(weights, tmp_path / "hf.safetensors", metadata={"format": "pt"})
    save_file(weights, tmp_path / "other.safetensors", metadata={HEADER_KEY: '{"format": "theirs"}'})
    save_file(weights, tmp_path / "junk.safetensors", metadata={HEADER_KEY: "not json"})
    for name in ("plain", "hf"):
        with pytest.raises(PredictorFileError, match="a safetensors file without a moetrace header"):
            load_path_predictor(tmp_path / f"{name}.safetensors")
    for name in ("other", "junk"):
        with pytest.raises(PredictorFileError, match="header is not ours"):
            load_path_predictor(tmp_path / f"{name}.safetensors")

    trace = moetrace.open_trace(GOLDEN)
    markov = make_path_predictor("markov")
    markov.fit(path_data(trace), (1,))
    good = tmp_path / "m.safetensors"
    save_path_predictor(markov, good, trace, (1,))
    content = good.read_bytes()
    for size in (4, 12, 200, len(content) - 1):
        (tmp_path / "cut.safetensors").write_bytes(content[:size])
        with pytest.raises(PredictorFileError, match="not a complete safetensors file"):
            load_path_predictor(tmp_path / "cut.safetensors", trace)
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(PredictorFileError, match="not a complete safetensors file"):
        load_path_predictor(tmp_path / "text.safetensors")
    with pytest.raises(PredictorFileError, match="does not exist"):
        load_path_predictor(tmp_path / "absent.safetensors")

    for version, message in ((FORMAT_VERSION + 1, "this moetrace reads version 1 only: upgrade"), ("1", "unknown")):
        _rewrite_header(good, tmp_path / "v.safetensors", format_version=version)
        with pytest.raises(PredictorFileError, match=message):
            load_path_predictor(tmp_path / "v.safetensors", trace)
    _rewrite_header(good, tmp_path / "kind.safetensors", kind="load-forecaster")
    with pytest.raises(PredictorFileError, match="holds a 'load-forecaster'"):
        load_path_predictor(tmp_path / "kind.safetensors", trace)
    with pytest.raises(PredictorFileError, match="not a saved moetrace load forecaster: it holds a 'path-predictor'"):
        _Neural.load(good)
    _rewrite_header(good, tmp_path / "nolookahead.safetensors", lookaheads=None)
    with pytest.raises(PredictorFileError, match="incomplete moetrace predictor header"):
        load_path_predictor(tmp_path / "nolookahead.safetensors", trace)
    save_file({}, tmp_path / "empty.safetensors", metadata={HEADER_KEY: json.dumps(_header(good))})
    with pytest.raises(PredictorFileError, match="its tensors do not fit its markov header"):
        load_path_predictor(tmp_path / "empty.safetensors", trace)
    assert_one_error_line(
        run("predict", "path", GOLDEN, "--method", "markov", "--load", tmp_path / "cut.safetensors"),
        "not a complete safetensors file",
    )


def _header(path: Path) -> dict:
    with safe_open(str(path), framework="numpy") as opened:
        return dict(json.loads(opened.metadata()[HEADER_KEY]))


def _rewrite_header(source: Path, target: Path, **changes: object) -> None:
    header = _header(source) | changes
    save_file(load_file(source), target, metadata={HEADER_KEY: json.dumps(header)})


@pytest.mark.parametrize("method", ["mlp", "lstm"])
def test_load_forecasters_round_trip(method, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 50, (120, 2, 4))
    trace = write_load_trace(tmp_path / "t", counts)
    shares = counts / counts.sum(axis=2, keepdims=True)
    forecaster = make_forecaster(method, window=10, train_steps=5, seed=3)
    assert isinstance(forecaster, _Neural)
    for horizon in (5, 40):
        forecaster.fit(shares[:100], horizon)
    save_forecaster(forecaster, tmp_path / "f.safetensors", trace)
    loaded = _Neural.load(tmp_path / "f.safetensors")
    assert loaded.name == method and loaded.options == forecaster.options and sorted(loaded.models) == [5, 40]
    assert loaded.loaded_meta["model"]["num_experts"] == 4 and loaded.loaded_meta["model"]["moe_layers"] == [0, 1]
    origins = np.array([60, 80])
    for horizon in (5, 40):
        np.testing.assert_array_equal(
            loaded.forecast_origins(shares, origins, horizon, None),
            forecaster.forecast_origins(shares, origins, horizon, None),
        )
    header = _header(tmp_path / "f.safetensors")
    assert header["kind"] == "load-forecaster" and header["method"] == method
    assert set(header["models"]) == {"5", "40"} and header["trace_hash"]

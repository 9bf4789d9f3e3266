"""`moetrace predict path`: path predictors against hand-computed examples and the model itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import assert_one_error_line, run
from test_predict_load import write_load_trace
from tiny_models import moe_spec, tiny_model

import moetrace
from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.predict.path import PathConfig, evaluate_paths, load_path_predictor, save_path_predictor
from moetrace.predict.paths import make_path_predictor
from moetrace.predict.paths.data import PathData, path_data, recall_at_k


def _data(experts: list, seq_id: list | None = None, num_experts: int = 3) -> PathData:
    array = np.array(experts, np.int64)
    n = len(array)
    return PathData(
        experts=array, seq_id=np.array(seq_id if seq_id is not None else range(n)), pos=np.zeros(n, np.int64),
        step=np.zeros(n, np.int64), token_id=None, pregate=None, layers=tuple(range(array.shape[1])), num_experts=num_experts,
    )  # fmt: skip


def test_markov_equals_a_hand_computed_example() -> None:
    # layer 0 -> layer 1, top-1: 0->1, 0->1, 0->2, 1->2
    train = _data([[[0], [1]], [[0], [1]], [[0], [2]], [[1], [2]]])
    markov = make_path_predictor("markov", smoothing=0.0)
    markov.fit(train, (1,))
    probe = _data([[[0], [0]], [[1], [0]], [[2], [0]]])
    scores = markov.scores(probe, 0, 1)
    np.testing.assert_allclose(scores[0], [0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(scores[1], [0, 0, 1])
    np.testing.assert_allclose(scores[2], [0, 0, 0])  # never seen: no evidence without smoothing
    smoothed = make_path_predictor("markov", smoothing=1.0)
    smoothed.fit(train, (1,))
    # popularity of layer 1: [0, 0.5, 0.5]; P(b | 0) = (C[0, b] + 1 × pop[b]) / (3 + 1)
    np.testing.assert_allclose(smoothed.scores(probe, 0, 1)[0], [0, 2.5 / 4, 1.5 / 4])
    np.testing.assert_allclose(smoothed.scores(probe, 0, 1)[2], [0, 0.5, 0.5])  # unseen source: popularity
    assert smoothed.predict(probe, 0, 1, k=1)[:2, 0].tolist() == [1, 2]


def test_recall_on_known_sets() -> None:
    predicted = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    actual = np.array([[3, 4, 1], [6, 5, 4], [0, 1, 2]])
    np.testing.assert_allclose(recall_at_k(predicted, actual), [2 / 3, 1.0, 0.0])


def test_popularity_predicts_the_busiest_experts() -> None:
    train = _data([[[0], [2]], [[1], [2]], [[2], [1]]])
    popularity = make_path_predictor("popularity")
    popularity.fit(train, (1,))
    assert popularity.predict(_data([[[0], [0]]]), 0, 1, k=2)[0].tolist() == [2, 1]


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_pregate_column_equals_the_models_own_router_on_its_hidden_states(family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(family)
    spec = moe_spec(family)
    prompts = [[1, 40, 77, 101, 9], [1, 200, 13]]
    trace = moetrace.record(model, prompts, tmp_path / "t", max_new_tokens=4, batch_size=2, pregate=True)
    data = path_data(trace)
    layers = model.model.layers
    for seq_id in range(len(prompts)):
        rows = np.flatnonzero(data.seq_id == seq_id)
        rows = rows[np.argsort(data.pos[rows])]
        fed = torch.tensor([_fed_tokens(trace, seq_id)])
        with torch.inference_mode():
            hidden = model(fed, output_hidden_states=True).hidden_states
            for i, (layer, following) in enumerate(zip(spec.moe_layers, spec.moe_layers[1:])):
                normed = layers[following].post_attention_layernorm(hidden[layer + 1][0])
                expected = layers[following].mlp.gate(normed)[2].numpy()
                np.testing.assert_array_equal(np.sort(data.pregate[rows, i], axis=1), np.sort(expected, axis=1))
        assert (data.pregate[rows, len(spec.moe_layers) - 1] == -1).all()  # no next MoE layer


def _fed_tokens(trace, seq_id):  # type: ignore[no-untyped-def]
    routes = trace.routes_arrays(["seq_id", "pos", "layer", "token_id"])
    rows = (routes["seq_id"] == seq_id) & (routes["layer"] == trace.meta.model.moe_layers[0])
    return routes["token_id"][rows][np.argsort(routes["pos"][rows])].tolist()


@pytest.fixture(scope="module")
def generation_trace(tmp_path_factory):  # type: ignore[no-untyped-def]
    model = tiny_model("mixtral", num_hidden_layers=4, dtype=torch.float32)
    prompts = [list(np.random.default_rng(s).integers(3, 259, 12)) for s in range(30)]
    return moetrace.record(
        model, prompts, tmp_path_factory.mktemp("gen") / "t", max_new_tokens=10, batch_size=10, pregate=True
    )


def test_split_by_sequence_never_leaks(generation_trace) -> None:  # type: ignore[no-untyped-def]
    data = path_data(generation_trace)
    for seed in range(5):
        train, test = data.split(0.8, seed)
        assert not set(train.seq_id) & set(test.seq_id)
        assert set(train.seq_id) | set(test.seq_id) == set(data.seq_id)
        assert train.tokens + test.tokens == data.tokens
        assert len(set(train.seq_id)) == 24


def test_saved_predictors_load_and_predict_the_same(generation_trace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = path_data(generation_trace)
    for method, options in (("markov", {}), ("mlp", {"train_steps": 50, "hidden": 32})):
        predictor = make_path_predictor(method, **options)
        predictor.fit(data, (1, 2))
        save_path_predictor(predictor, tmp_path / f"{method}.safetensors", generation_trace, (1, 2))
        loaded = load_path_predictor(tmp_path / f"{method}.safetensors", generation_trace)
        for d in (1, 2):
            np.testing.assert_array_equal(loaded.predict(data, 0, d), predictor.predict(data, 0, d))


def test_evaluation_reports_every_method_and_lookahead(generation_trace) -> None:  # type: ignore[no-untyped-def]
    config = PathConfig(methods=("popularity", "markov", "pregate", "mlp"), lookaheads=(1, 2))
    result = evaluate_paths(generation_trace, config, predictor_options={"mlp": {"train_steps": 100, "hidden": 32}})
    got = {(r["method"], r["lookahead"]) for r in result.results}
    assert got == {(m, d) for m in ("popularity", "markov", "mlp") for d in (1, 2)} | {("pregate", 1)}
    assert all(0 <= r["recall"] <= 1 and len(r["per_layer"]) == 4 - r["lookahead"] for r in result.results)
    assert "pregate answers lookahead ≤ 1 only" in result.notes


def test_bad_inputs(generation_trace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    load_only = write_load_trace(tmp_path / "load", np.ones((5, 2, 4), np.int64))
    with pytest.raises(TraceFormatError, match="has no routes"):
        evaluate_paths(load_only, PathConfig())
    with pytest.raises(InvalidArgumentError, match="lookahead 4 is past the last layer: the trace has 4 MoE layers"):
        evaluate_paths(generation_trace, PathConfig(methods=("markov",), lookaheads=(1, 4)))
    other = moetrace.record(tiny_model("olmoe"), [[1, 2, 3]], tmp_path / "other", max_new_tokens=2)
    markov = make_path_predictor("markov")
    markov.fit(path_data(generation_trace), (1,))
    save_path_predictor(markov, tmp_path / "m.safetensors", generation_trace, (1,))
    with pytest.raises(
        InvalidArgumentError, match="saved for a model with 4 MoE layers × 4 experts, top-2; this trace"
    ):
        load_path_predictor(tmp_path / "m.safetensors", other)
    no_pregate = moetrace.record(tiny_model("olmoe"), [[1, 2, 3], [1, 4]], tmp_path / "np", max_new_tokens=2)
    with pytest.raises(InvalidArgumentError, match="record --pregate"):
        evaluate_paths(no_pregate, PathConfig(methods=("pregate",), split=0.5))


def test_cli(generation_trace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("predict", "path", generation_trace.path, "--method", "markov", "--lookahead", "1,2", "--json",
                 "--save", tmp_path / "m.safetensors", "--plot", tmp_path / "p.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)["results"]
    assert [(r["method"], r["lookahead"]) for r in first] == [("markov", 1), ("markov", 2)]
    again = run("predict", "path", generation_trace.path, "--method", "markov", "--lookahead", "1,2", "--json",
                "--load", tmp_path / "m.safetensors")  # fmt: skip
    assert [r["recall"] for r in json.loads(again.stdout)["results"]] == [r["recall"] for r in first]
    table = run("predict", "path", generation_trace.path, "--method", "popularity,markov,pregate")
    assert table.exit_code == 0 and "recall@2" in table.stdout
    assert_one_error_line(run("predict", "path", generation_trace.path, "--lookahead", 9), "past the last layer")
    assert_one_error_line(
        run("predict", "path", generation_trace.path, "--method", "oracle"), "unknown path prediction"
    )

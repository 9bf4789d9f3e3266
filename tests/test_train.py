"""`record --train`: per-optimizer-step load of a real torch training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from moetrace.errors import InvalidArgumentError, NotAMoEModelError
from moetrace.train.loop import DataTooShortError, TrainConfig, learning_rate_factor, train_and_record

TOKENS = torch.randint(3, 259, (5000,), generator=torch.Generator().manual_seed(0))


def _train(tmp_path, name="t", family="mixtral", **options):  # type: ignore[no-untyped-def]
    model = tiny_model(family, dtype=torch.float32, seed=1)
    config = TrainConfig(**{"steps": 6, "batch_size": 4, "seq_len": 16, **options})
    return train_and_record(model, TOKENS, tmp_path / name, config), model


def test_load_of_every_optimizer_step(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace, _ = _train(tmp_path, grad_accum=2)
    dense = trace.dense_load()
    np.testing.assert_array_equal(dense.steps, np.arange(6))
    assert set(dense.phases) == {"train"}
    # every token of both micro-batches is routed to top_k experts at each layer
    assert (dense.tokens.sum(axis=2) == 4 * 16 * 2).all()
    assert trace.meta.run["mode"] == "train" and trace.meta.run["steps"] == 6
    assert len(trace.meta.run["losses"]) == 6
    assert not trace.has_routes


def test_routes_of_a_sample_every_m_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace, _ = _train(tmp_path, routes_every=3, routes_sample=2)
    routes = trace.routes_arrays(["seq_id", "pos", "step", "phase", "layer"])
    assert sorted(set(routes["step"].tolist())) == [0, 3]
    assert sorted(set(routes["seq_id"].tolist())) == [0, 1, 12, 13]  # step × batch_size + row, rows 0 and 1
    assert set(routes["phase"]) == {"train"}
    assert len(routes["seq_id"]) == 2 * 2 * 16 * 2  # 2 steps × 2 rows × 16 positions × 2 layers


def test_sampled_routes_are_the_routing_of_that_step(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The load of a step with routes equals its sampled routes' counts when every row is sampled."""
    trace, _ = _train(tmp_path, routes_every=1, routes_sample=4)
    routes = trace.routes_arrays(["step", "layer", "experts"])
    dense = trace.dense_load()
    for step in range(6):
        for i, layer in enumerate(trace.meta.model.moe_layers):
            chosen = routes["experts"][(routes["step"] == step) & (routes["layer"] == layer)]
            np.testing.assert_array_equal(np.bincount(chosen.reshape(-1), minlength=4), dense.tokens[step, i])


def test_training_learns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = torch.arange(3, 35).repeat(200)  # a periodic sequence: easy to learn
    model = tiny_model("mixtral", dtype=torch.float32, seed=1)
    trace = train_and_record(model, text, tmp_path / "t", TrainConfig(steps=40, batch_size=8, seq_len=16, lr=1e-2))
    losses = trace.meta.run["losses"]
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_tables_byte_for_byte(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, _ = _train(tmp_path, "a", routes_every=2)
    second, _ = _train(tmp_path, "b", routes_every=2)
    parts = [(a, b) for a, b in zip(first.route_parts + first.load_parts, second.route_parts + second.load_parts)]
    assert len(parts) == 2
    for a, b in parts:
        assert a.read_bytes() == b.read_bytes()
    other, _ = _train(tmp_path, "c", routes_every=2, seed=1)
    assert other.load_parts[0].read_bytes() != first.load_parts[0].read_bytes()


def test_aux_loss_is_added_only_when_asked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    on, _ = _train(tmp_path, "on", steps=2)
    off, _ = _train(tmp_path, "off", steps=2, aux_loss_coef=0.0)
    # same data and weights at step 0: the losses differ by the weighted auxiliary loss
    assert on.meta.run["losses"][0] > off.meta.run["losses"][0]


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=100, warmup_steps=10)
    assert learning_rate_factor(0, config) == pytest.approx(0.1)
    assert learning_rate_factor(9, config) == pytest.approx(1.0)
    assert learning_rate_factor(99, config) == pytest.approx(0.1, abs=1e-3)


def test_bad_training_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match="--steps must be at least 1, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(DataTooShortError, match="holds 50 tokens; one batch of 4 × 17 needs 68"):
        train_and_record(
            tiny_model("mixtral", dtype=torch.float32),
            TOKENS[:50],
            tmp_path / "t",
            TrainConfig(batch_size=4, seq_len=16),
        )
    with pytest.raises(NotAMoEModelError):
        train_and_record(
            tiny_model("llama", dtype=torch.float32),
            TOKENS,
            tmp_path / "t",
            TrainConfig(steps=1, batch_size=4, seq_len=16),
        )
    assert not (tmp_path / "t").exists()

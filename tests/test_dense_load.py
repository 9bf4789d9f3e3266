"""The load summed by DuckDB into (grouped) dense rows equals the per-step array it replaces; a load
series too large for memory is refused before it is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run

import moetrace
from moetrace.errors import InvalidArgumentError
from moetrace.predict import series as series_module
from moetrace.predict.series import bucket_rows, load_series
from moetrace.report.plots import plot_trace_load
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.schema import PHASES
from moetrace.trace.writer import TraceWriter

EXAMPLE_GENERATE = Path(__file__).resolve().parents[1] / "traces" / "examples" / "generate"


# -- what load_series computed before: the per-step dense array, then bucketing in numpy -----------


def reference_dense(trace: moetrace.Trace, phase: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, (S, L, E) int64 counts) from the trace's load rows, summed with np.add.at."""
    load = trace.load().to_pandas()
    if phase is not None:
        load = load[load["phase"].astype(str) == phase]
    steps, step_row = np.unique(load["step"].to_numpy(np.int64), return_inverse=True)
    layers = trace.meta.model.moe_layers
    layer_pos = np.searchsorted(np.array(layers), load["layer"].to_numpy(np.int64))
    dense = np.zeros((len(steps), len(layers), trace.meta.model.num_experts), np.int64)
    np.add.at(dense, (step_row, layer_pos, load["expert"].to_numpy(np.int64)), load["tokens"].to_numpy(np.int64))
    return steps, dense


def reference_bucket_of(per_step: np.ndarray, routings: int) -> np.ndarray:
    """The step-by-step rule: a bucket closes once it holds at least `routings` routings."""
    bucket_of = np.empty(len(per_step), np.int64)
    bucket, filled = 0, 0.0
    for i, routed in enumerate(per_step):
        bucket_of[i] = bucket
        filled += routed
        if filled >= routings:
            bucket, filled = bucket + 1, 0.0
    return bucket_of


def reference_series(
    trace: moetrace.Trace, phase: str | None, bucket: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, shares, tokens) as load_series computed them from the float64 per-step array."""
    steps, dense = reference_dense(trace, phase)
    counts = dense.astype(np.float64)
    if bucket is not None:
        bucket_of = reference_bucket_of(counts[:, 0, :].sum(axis=1), bucket * trace.meta.model.top_k)
        n = int(bucket_of[-1]) + 1
        out = np.zeros((n, *counts.shape[1:]))
        np.add.at(out, bucket_of, counts)
        first = np.full(n, -1, np.int64)
        first[bucket_of[::-1]] = steps[::-1]
        counts, steps = out, first
    totals = counts.sum(axis=2)
    if (totals == 0).any():
        counts = counts.copy()
        for t, layer in zip(*np.nonzero(totals == 0)):
            counts[t, layer] = counts[t - 1, layer] if t > 0 else 1.0
        totals = counts.sum(axis=2)
    return steps, counts / totals[..., None], totals


# -- traces ----------------------------------------------------------------------------------------


def generation_routes(path: Path, seed: int = 0) -> moetrace.Trace:
    """A generation trace with routes only (its load is counted by DuckDB): a prefill step of many
    tokens, then decode steps of a few, some steps in which the first MoE layer or another routes
    nothing (a skipped layer), and step numbers with gaps."""
    rng = np.random.default_rng(seed)
    info = ModelInfo(num_experts=6, top_k=2, moe_layers=(1, 3, 4))
    with TraceWriter(path, TraceMeta.new(info, {"mode": "generate"})) as writer:
        for step in [0, *range(1, 40), *range(45, 70, 2)]:
            phase = "prefill" if step == 0 else "decode"
            tokens = 23 if step == 0 else int(rng.integers(1, 5))
            layers = [layer for layer in info.moe_layers if rng.random() > (0.3 if step % 7 == 3 else 0.0)]
            for layer in layers:
                experts = np.stack([rng.choice(6, 2, replace=False, p=[0.4, 0.2, 0.2, 0.1, 0.05, 0.05])
                                    for _ in range(tokens)]).astype(np.int16)  # fmt: skip
                writer.write_routes(seq_id=np.zeros(tokens, np.int32), pos=np.arange(tokens, dtype=np.int32),
                                    step=step, phase=phase, layer=np.full(tokens, layer, np.int16), experts=experts)  # fmt: skip
    return moetrace.open_trace(path)


def train_load(path: Path, seed: int = 1) -> moetrace.Trace:
    """A training trace with load parts only, in which layers now and then route nothing."""
    counts = np.random.default_rng(seed).integers(0, 40, size=(120, 2, 5))
    counts[counts < 8] = 0
    counts[[0, 17, 18, 50], 0] = 0  # the first layer empty (at the first step too)
    counts[[30, 31], 1] = 0
    info = ModelInfo(num_experts=5, top_k=3, moe_layers=(0, 1))
    with TraceWriter(path, TraceMeta.new(info, {"mode": "train"})) as writer:
        for step in range(len(counts)):
            layer, expert = np.nonzero(counts[step])
            writer.write_load(step=step, phase="train", layer=layer, expert=expert, tokens=counts[step, layer, expert])
    return moetrace.open_trace(path)


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, moetrace.Trace]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("dense")
    return {
        "example generate (routes and load)": moetrace.open_trace(EXAMPLE_GENERATE),
        "routes only": generation_routes(out / "routes"),
        "load only, train": train_load(out / "train"),
    }


# -- equality with the per-step array --------------------------------------------------------------


@pytest.mark.parametrize("bucket", [None, 1, 3, 16, 10_000])
def test_load_series_equals_the_per_step_array_bucketed_after(traces, bucket) -> None:  # type: ignore[no-untyped-def]
    compared = 0
    for name, trace in traces.items():
        for phase in (None, *PHASES):
            if len(reference_dense(trace, phase)[0]) == 0:
                continue
            steps, shares, tokens = reference_series(trace, phase, bucket)
            got = load_series(trace, phase, bucket)
            np.testing.assert_array_equal(got.steps, steps, err_msg=f"{name}, {phase}")
            np.testing.assert_array_equal(got.shares, shares, err_msg=f"{name}, {phase}")
            np.testing.assert_array_equal(got.tokens, tokens, err_msg=f"{name}, {phase}")
            assert got.shares.dtype == np.float64 and got.layers == trace.meta.model.moe_layers
            compared += 1
    assert compared == 8  # both generation traces: all, prefill, decode; train: all, train


def test_dense_load_rows_are_steps_or_groups_of_them(traces) -> None:  # type: ignore[no-untyped-def]
    for trace in traces.values():
        steps, dense = reference_dense(trace, None)
        got = trace.dense_load()
        np.testing.assert_array_equal(got.steps, steps)
        np.testing.assert_array_equal(got.tokens, dense)
        assert got.tokens.dtype == np.int32 and (got.step_counts == 1).all()
        load = trace.load().to_pandas()
        phase_of = dict(zip(load["step"], load["phase"].astype(str)))
        assert got.phases.tolist() == [phase_of[s] for s in steps]
        rows = np.arange(len(steps)) // 7
        grouped = trace.dense_load(row_of_step=rows)
        summed = np.zeros_like(grouped.tokens)
        np.add.at(summed, rows, dense)
        np.testing.assert_array_equal(grouped.tokens, summed)
        np.testing.assert_array_equal(grouped.steps, steps[::7])
        np.testing.assert_array_equal(grouped.step_counts, np.bincount(rows))
        tail = trace.dense_load(steps=trace.load_steps().select(slice(-5, None)))
        np.testing.assert_array_equal(tail.tokens, dense[-5:])
    with pytest.raises(ValueError, match="row_of_step"):
        trace.dense_load(row_of_step=np.arange(len(steps)) * 2)


@pytest.mark.parametrize("seed", range(6))
def test_bucket_rows_keeps_the_step_by_step_closing_rule(seed) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    per_step = rng.integers(0, 12, size=int(rng.integers(1, 400))) * (rng.random(1)[0] > 0.3)
    per_step[rng.random(len(per_step)) < 0.2] = 0
    for routings in (1, 5, 8, 37, 10_000):
        np.testing.assert_array_equal(bucket_rows(per_step, routings), reference_bucket_of(per_step, routings))


# -- too large for memory ------------------------------------------------------------------------


def test_a_series_too_large_is_refused_with_a_bucket_that_fits(traces, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    trace = traces["routes only"]  # 53 steps × 3 layers × 6 experts: 12 bytes a cell → 11,448 bytes
    called = []
    monkeypatch.setattr(type(trace), "dense_load", lambda *a, **k: called.append(1))
    monkeypatch.setattr(series_module, "available_memory", lambda: 2 * 3 * 6 * 12 * 10)  # 10 rows fit
    with pytest.raises(InvalidArgumentError) as caught:
        load_series(trace)
    message = str(caught.value)
    assert message.startswith(
        "the load series would take 11.4 kB (53 steps × 3 layers × 6 experts), more than half of the 4.3 kB"
    )
    assert "group steps with --bucket N (tokens per row), e.g. --bucket 32" in message
    assert not called  # refused before the load is read
    with pytest.raises(InvalidArgumentError, match=r"\(28 buckets of 4 tokens × 3 layers × 6 experts\)"):
        load_series(trace, bucket=4)
    monkeypatch.undo()
    monkeypatch.setattr(series_module, "available_memory", lambda: 2 * 3 * 6 * 12 * 10)
    assert load_series(trace, bucket=32).length <= 10  # the suggested bucket fits


def test_cli_refuses_a_series_too_large_in_one_line(traces, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(series_module, "available_memory", lambda: 1000)
    result = run("predict", "load", traces["load only, train"].path, "--method", "window")
    assert_one_error_line(result, "the load series would take")
    assert "--bucket N (tokens per row)" in result.stderr


def test_available_memory_is_a_positive_number_of_bytes() -> None:
    assert series_module.available_memory() > 0


# -- inspect --plot ----------------------------------------------------------------------------------


def test_plot_of_grouped_steps(traces, tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = traces["routes only"]
    assert plot_trace_load(trace, tmp_path / "a.png", max_rows=10).stat().st_size > 0
    result = run("inspect", trace.path, "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.png").stat().st_size > 0

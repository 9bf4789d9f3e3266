"""The demo model, its committed example traces, and the demo pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_error_line, run
from tiny_models import save_tiny_model

import moetrace
from moetrace.demo.pipeline import run_demo
from moetrace.models.demo_model import BUILD_FILE, TRAIN_TRACE, DemoSpec, demo_model_dir, random_weight_model

EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"
TINY = DemoSpec(
    hidden_size=32,
    intermediate_size=32,
    num_experts=4,
    vocab_size=300,
    corpus_chars=150_000,
    steps=12,
    batch_size=4,
    seq_len=16,
    routes_every=5,
)


def test_demo_training_trace_shows_a_transient_then_a_stable_phase() -> None:
    trace = moetrace.open_trace(EXAMPLES / "train")
    stats = moetrace.trace_stats(trace)
    assert stats.steps >= 2000 and set(stats.phases) == {"train"}
    assert stats.load_variance_end < 0.25 * stats.load_variance_start


def _prompt_ids(trace):  # type: ignore[no-untyped-def]
    routes = trace.routes_arrays(["seq_id", "pos", "phase", "layer", "token_id"])
    first = (routes["layer"] == trace.meta.model.moe_layers[0]) & (routes["phase"] == "prefill")
    prompts = []
    for seq in np.unique(routes["seq_id"][first]):
        rows = first & (routes["seq_id"] == seq)
        prompts.append(routes["token_id"][rows][np.argsort(routes["pos"][rows])].tolist())
    return prompts


def test_demo_model_routing_is_learned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On the same prompts, the trained demo model's layers predict each other better than random weights do."""
    trained = moetrace.open_trace(EXAMPLES / "generate")
    spec = DemoSpec()
    assert (trained.meta.model.num_experts, trained.meta.model.top_k) == (spec.num_experts, spec.top_k)
    run_options = trained.meta.run
    random = moetrace.record(
        random_weight_model(spec), _prompt_ids(trained), tmp_path / "random",
        max_new_tokens=run_options["max_new_tokens"], batch_size=run_options["batch_size"],
    )  # fmt: skip
    ours, theirs = moetrace.trace_stats(trained), moetrace.trace_stats(random)
    assert ours.inter_layer_predictability > theirs.inter_layer_predictability + 0.08


def test_demo_pipeline_builds_once_and_records_both_traces(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MOETRACE_CACHE", str(tmp_path / "cache"))
    result = run_demo(tmp_path / "demo", spec=TINY, max_new_tokens=4)
    folder = demo_model_dir(TINY)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    built = (folder / BUILD_FILE).stat().st_mtime_ns
    train, generate = result.traces["train"], result.traces["generate"]
    assert train.meta.run["mode"] == "train" and train.meta.run["steps"] == TINY.steps
    assert generate.meta.model.name == "moetrace/demo-moe" and generate.meta.run["num_sequences"] == 52
    assert all(figure.is_file() for figure in result.figures)
    assert result.offload.baseline["identical"] and result.offload.hits + result.offload.misses > 0
    again = run_demo(tmp_path / "demo", spec=TINY, max_new_tokens=4)  # cached: no second training
    assert (folder / BUILD_FILE).stat().st_mtime_ns == built
    assert again.traces["generate"].meta.complete
    # the cached folder is a normal model folder that `record --model` accepts
    out = tmp_path / "from-folder"
    result = run("record", "--model", folder, "--max-new-tokens", 2, "--out", out)
    assert result.exit_code == 0, result.output


def test_same_seed_same_demo_model_and_trace_byte_for_byte(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from moetrace.demo.build import build_demo_model

    folders = []
    for name in ("a", "b"):
        monkeypatch.setenv("MOETRACE_CACHE", str(tmp_path / name))
        folders.append(build_demo_model(TINY))
    a, b = folders
    for relative in [
        "model.safetensors",
        "tokenizer.json",
        *(p.relative_to(a) for p in (a / TRAIN_TRACE).rglob("*.parquet")),
    ]:
        assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return save_tiny_model("mixtral", tmp_path_factory.mktemp("models") / "tiny-mixtral")


def test_record_train_from_the_command_line(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data.txt"
    data.write_text("The quick brown fox jumps over the lazy dog.\n\n" * 40)
    out = tmp_path / "T"
    result = run(
        "record", "--train", "--model", model_dir, "--data", data, "--steps", 5, "--batch-size", 4, "--seq-len", 16,
        "--routes-every", 2, "--save-model", tmp_path / "tuned", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "optimizer steps" in result.stdout
    trace = moetrace.open_trace(out)
    assert trace.meta.run["steps"] == 5 and trace.meta.run["data"] == str(data)
    assert (tmp_path / "tuned" / "config.json").is_file()
    assert run("inspect", out).exit_code == 0


def test_bad_training_inputs_from_the_command_line(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert_one_error_line(
        run("record", "--train", "--model", model_dir, "--data", short, "--out", tmp_path / "T"), "needs"
    )
    assert_one_error_line(
        run("record", "--train", "--model", model_dir, "--steps", 0, "--out", tmp_path / "T"),
        "--steps must be at least 1",
    )
    llama = save_tiny_model("llama", tmp_path / "llama")
    long = tmp_path / "long.txt"
    long.write_text("some text to train on. " * 2000)
    result = run("record", "--train", "--model", llama, "--data", long, "--steps", 2, "--out", tmp_path / "T")
    assert_one_error_line(result, "no MoE layers")
    assert not (tmp_path / "T").exists()

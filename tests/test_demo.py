"""The demo model: a tiny build of its recipe, checked against the model's own loss and routing
before and after training; its committed example traces; and the demo pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_error_line, run
from tiny_models import save_tiny_model

import moetrace
from moetrace.demo.build import build_demo_model
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


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(cache root, model folder) of TINY, built once for this module."""
    cache = tmp_path_factory.mktemp("demo-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOETRACE_CACHE", str(cache))
        return cache, build_demo_model(TINY)


def _per_step_routings(trace) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Σ over experts of each (step, layer)'s recorded load."""
    return trace.dense_load().tokens.sum(axis=2)


def test_training_changes_what_the_model_predicts_and_how_it_routes(tiny_build) -> None:  # type: ignore[no-untyped-def]
    """The built model against its own untrained initialisation (`random_weight_model` of the same spec
    and seed is the builder's starting point), on the same corpus tokens, as the models themselves
    report: the trained one's loss is lower, and its routers choose other experts for a large share of
    the tokens (a build that saved the untrained weights, or trained nothing, gives 0)."""
    import pydoc_data.topics  # part of the demo corpus

    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = tiny_build
    trained = AutoModelForCausalLM.from_pretrained(folder).eval()
    untrained = random_weight_model(TINY)
    text = pydoc_data.topics.topics["if"] + pydoc_data.topics.topics["while"]
    ids = torch.tensor([AutoTokenizer.from_pretrained(folder)(text)["input_ids"][:256]])
    assert ids.shape[1] == 256
    with torch.no_grad():
        after = trained(input_ids=ids, labels=ids, output_router_logits=True)
        before = untrained(input_ids=ids, labels=ids, output_router_logits=True)
    assert after.loss < before.loss - 0.1  # measured: 5.31 against 5.68 (ln 300 = 5.70)
    assert len(after.router_logits) == len(before.router_logits) == TINY.num_hidden_layers
    for new, old in zip(after.router_logits, before.router_logits):
        chosen = [np.sort(torch.topk(logits, TINY.top_k).indices.numpy(), axis=1) for logits in (new, old)]
        assert (chosen[0] != chosen[1]).any(axis=1).mean() > 0.25  # measured: 0.51 to 0.79 per layer


def test_the_training_trace_routes_every_token_of_every_step(tiny_build) -> None:  # type: ignore[no-untyped-def]
    """Each optimizer step routes batch × sequence length tokens to top-k experts in every MoE layer."""
    _, folder = tiny_build
    trace = moetrace.open_trace(folder / TRAIN_TRACE)
    assert trace.meta.complete and trace.meta.run["mode"] == "train" and trace.meta.run["steps"] == TINY.steps
    assert trace.meta.model.moe_layers == tuple(range(TINY.num_hidden_layers))
    routings = _per_step_routings(trace)
    assert routings.shape == (TINY.steps, TINY.num_hidden_layers)
    assert (routings == TINY.batch_size * TINY.seq_len * TINY.top_k).all()


def test_committed_example_traces_match_the_demo_recipe() -> None:
    """traces/examples/ (used by the docs) was recorded from the demo model as DemoSpec builds it now."""
    spec = DemoSpec()
    train, generate = moetrace.open_trace(EXAMPLES / "train"), moetrace.open_trace(EXAMPLES / "generate")
    for trace in (train, generate):
        assert trace.meta.complete and trace.meta.model.name == "moetrace/demo-moe"
        assert (trace.meta.model.num_experts, trace.meta.model.top_k) == (spec.num_experts, spec.top_k)
        assert trace.meta.model.moe_layers == tuple(range(spec.num_hidden_layers))
    assert train.meta.run["steps"] == spec.steps
    assert (_per_step_routings(train) == spec.batch_size * spec.seq_len * spec.top_k).all()


@pytest.mark.slow  # two whole demo runs (recording 52 prompts, backtests, path predictors, an offloaded run)
def test_demo_pipeline_builds_once_and_records_both_traces(tiny_build, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`make demo`'s job end to end on the tiny build: it is not trained again, and its traces, figures and
    offloaded run come out."""
    cache, folder = tiny_build
    monkeypatch.setenv("MOETRACE_CACHE", str(cache))
    assert demo_model_dir(TINY) == folder
    built = (folder / BUILD_FILE).stat().st_mtime_ns
    result = run_demo(tmp_path / "demo", spec=TINY, max_new_tokens=4)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
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


def test_same_seed_same_demo_model_and_trace_byte_for_byte(tiny_build, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, a = tiny_build
    monkeypatch.setenv("MOETRACE_CACHE", str(tmp_path / "again"))
    b = build_demo_model(TINY)
    assert a != b
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

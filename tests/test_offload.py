"""Live offloading (`moetrace run --offload`) on the CPU: host tensors stand in for device slots, the
code path is the GPU's. Truths: the plain model's own greedy output, `simulate`'s replay of the
run's own trace, and the cache's slot bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import assert_one_error_line, run
from tiny_models import EOS_TOKEN_ID, PAD_TOKEN_ID, save_tiny_model, tiny_model

import moetrace
from moetrace.errors import InvalidArgumentError
from moetrace.offload.run import run_model
from moetrace.offload.runtime import OffloadConfig, Offloader
from moetrace.sim.simulate import SimConfig, simulate
from moetrace.trace.record import generate, left_pad

PROMPTS = ["def main():", "import os, sys", "The quick brown fox jumps over", "x = [1, 2, 3]", "Hi"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("offload_models")
    return {family: save_tiny_model(family, root / family, num_hidden_layers=4)
            for family in ("mixtral", "qwen3_moe", "deepseek_v3")}  # fmt: skip


def replayed(trace_dir, policy: str, capacity: int, pool: bool = False) -> tuple[int, int]:
    result = simulate(moetrace.open_trace(trace_dir), SimConfig(policies=(policy,), capacities=(capacity,), pool=pool))
    return result.results[0]["hits"], result.results[0]["misses"]


@pytest.mark.parametrize(
    ("family", "policy", "capacity", "pool"),
    [("mixtral", "lru", 3, False), ("qwen3_moe", "fifo", 2, False), ("deepseek_v3", "lfu", 5, False),
     ("deepseek_v3", "lru", 12, True)],
)  # fmt: skip
def test_offloaded_run_generates_the_same_and_counts_what_simulate_counts(
    models, family, policy, capacity, pool, tmp_path
) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    report = run_model(str(models[family]), PROMPTS, offload=True, policy=policy, capacity=capacity, pool=pool,
                       compare=True, max_new_tokens=12, batch_size=2, device="cpu", record=tmp_path / "run")  # fmt: skip
    assert report.baseline is not None and report.baseline["identical"]
    assert report.generated == report.baseline["generated"]
    assert report.decode_tokens == sum(len(g) for g in report.generated) > 0
    assert report.misses > 0 and report.hits > 0  # capacity below the number of experts: both happen
    assert (report.hits, report.misses) == replayed(tmp_path / "run", policy, capacity, pool)
    assert report.loads == report.misses  # demand loads only, one per miss
    assert 0 < report.decode_bytes < report.bytes  # the cold start is in prefill
    expert_bytes = moetrace.open_trace(tmp_path / "run").meta.model.expert_bytes
    assert report.bytes == report.loads * expert_bytes


@pytest.mark.parametrize(("family", "capacity", "pool"), [("qwen3_moe", 3, False), ("deepseek_v3", 8, True)])
def test_prefetching_run_counts_what_simulate_counts(models, family, capacity, pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """lru+pregate live and replayed on the run's own trace (recorded with its pre-gate column): the
    same hits, misses, prefetch loads and useful prefetches; in one pool the layer just served is
    not evicted by the next layer's prefetch."""
    report = run_model(str(models[family]), PROMPTS, offload=True, policy="lru+pregate", capacity=capacity, pool=pool,
                       max_new_tokens=12, batch_size=2, device="cpu", record=tmp_path / "run")  # fmt: skip
    replay = simulate(moetrace.open_trace(tmp_path / "run"),
                      SimConfig(policies=("lru+pregate",), capacities=(capacity,), pool=pool)).results[0]  # fmt: skip
    assert report.prefetch_loads > 0
    assert (report.hits, report.misses, report.prefetch_loads) == (
        replay["hits"],
        replay["misses"],
        replay["prefetch_loads"],
    )
    assert report.useful_prefetches / report.prefetch_loads == pytest.approx(replay["prefetch_accuracy"])


def _generate(model, prompts: list[list[int]], new_tokens: int):  # type: ignore[no-untyped-def]
    ids, mask = left_pad(prompts, PAD_TOKEN_ID, torch.device("cpu"))
    with torch.inference_mode():
        return generate(model, ids, mask, new_tokens, PAD_TOKEN_ID, [EOS_TOKEN_ID])


def test_no_slot_leaks_after_a_long_run() -> None:
    """Many batches, long generations, a pool smaller than two layers' experts: after every forward
    each slot holds one expert at most and each resident exactly one slot; the slots never grow."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 259, size=int(rng.integers(2, 12))).tolist() for _ in range(12)]
    plain = tiny_model("qwen3_moe", num_hidden_layers=4)
    model = tiny_model("qwen3_moe", num_hidden_layers=4)
    offloader = Offloader(model, OffloadConfig(policy="lru", capacity=6, pool=True), torch.device("cpu"),
                          eos_token_ids=(EOS_TOKEN_ID,))  # fmt: skip
    slots_before = [s.buffer.data_ptr() for s in offloader.slots]
    checks = []
    model.register_forward_hook(lambda *_: checks.append(offloader.cache.check() is None))
    for start in range(0, len(prompts), 4):
        batch = prompts[start : start + 4]
        assert torch.equal(_generate(model, batch, 40), _generate(plain, batch, 40))
    stats = offloader.finish()
    assert len(checks) > 100 and all(checks)
    assert [s.buffer.data_ptr() for s in offloader.slots] == slots_before
    assert len(offloader.cache.slot_of[0]) == 6
    assert stats.hits + stats.misses == sum(h + m for h, m in stats.per_layer)
    assert stats.streamed == 0  # capacity ≥ top-k: every miss found a slot


def test_every_expert_resident_means_misses_only_on_first_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Capacity = number of experts: nothing is evicted, so the misses are the distinct experts each
    layer used, as the run's own trace lists them."""
    model = tiny_model("mixtral", num_hidden_layers=3)
    offloader = Offloader(model, OffloadConfig(policy="lfu", capacity=4), torch.device("cpu"))
    with moetrace.tracing(model, tmp_path / "t", eos_token_ids=[EOS_TOKEN_ID]):
        _generate(model, [[5, 6, 7, 8, 9, 10], [1, 2]], 10)
    stats = offloader.finish()
    routes = moetrace.open_trace(tmp_path / "t").routes().to_pandas()
    distinct = sum(len(set(np.concatenate(group.tolist()))) for _, group in routes.groupby("layer")["experts"])
    assert stats.misses == stats.loads == distinct


def test_an_offloaded_model_is_freed_with_its_offloader() -> None:
    """No global registry keeps a model (and its device slots) alive after a run."""
    import gc
    import weakref

    model = tiny_model("mixtral")
    offloader = Offloader(model, OffloadConfig(capacity=2), torch.device("cpu"))
    _generate(model, [[5, 6, 7]], 3)
    gone_model, gone_slots = weakref.ref(model), weakref.ref(offloader.slots[0].buffer)
    del model, offloader
    gc.collect()
    assert gone_model() is None and gone_slots() is None


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_pregate_prefetching_keeps_the_output_and_loads_ahead(family) -> None:  # type: ignore[no-untyped-def]
    prompts = [[1, 40, 77, 101, 9], [1, 200, 13, 55, 66, 71, 90, 3, 18], [1, 5, 250]]
    plain = tiny_model(family, num_hidden_layers=4)
    demand = tiny_model(family, num_hidden_layers=4)
    ahead = tiny_model(family, num_hidden_layers=4)
    demand_offload = Offloader(demand, OffloadConfig(policy="lru", capacity=4), torch.device("cpu"))
    ahead_offload = Offloader(ahead, OffloadConfig(policy="lru+pregate", capacity=4), torch.device("cpu"))
    expected = _generate(plain, prompts, 12)
    assert torch.equal(_generate(demand, prompts, 12), expected)
    assert torch.equal(_generate(ahead, prompts, 12), expected)
    with_prefetch, without = ahead_offload.finish(), demand_offload.finish()
    assert with_prefetch.prefetch_loads > 0
    assert 0 < ahead_offload.cache.useful_prefetches <= with_prefetch.prefetch_loads
    assert with_prefetch.hits + with_prefetch.misses == without.hits + without.misses  # the same accesses
    assert with_prefetch.hits > without.hits  # the pre-gate is the next router itself, on nearly its input


def test_saved_predictor_drives_prefetching(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "trace"
    assert run("record", "--model", models["mixtral"], "--out", trace, "--max-new-tokens", 8).exit_code == 0
    predictor = tmp_path / "markov.pt"
    saved = run("predict", "path", trace, "--method", "markov", "--split", "0.8", "--save", predictor)
    assert saved.exit_code == 0, saved.output
    report = run_model(str(models["mixtral"]), PROMPTS, offload=True, policy="lru+markov", capacity=2, predictor=predictor,
                       compare=True, max_new_tokens=10, device="cpu", record=tmp_path / "run")  # fmt: skip
    assert report.baseline is not None and report.baseline["identical"]
    assert report.prefetch_loads > 0
    replay = simulate(moetrace.open_trace(tmp_path / "run"), SimConfig(policies=("lru+markov",), capacities=(2,)),
                      predictor=predictor).results[0]  # fmt: skip
    assert (report.hits, report.misses, report.prefetch_loads) == (
        replay["hits"],
        replay["misses"],
        replay["prefetch_loads"],
    )
    assert report.loads == report.misses + report.prefetch_loads
    assert 0 <= report.useful_prefetches <= report.prefetch_loads


def test_cli_json_report(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "--model", models["mixtral"], "--offload", "--capacity", 2, "--max-new-tokens", 6,
                 "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("generated", "hits", "misses", "bytes", "tokens_per_s", "peak_memory_bytes"):
        assert key in report
    assert len(report["generated"]) == 52  # the built-in prompts
    plain = json.loads(
        run("run", "--model", models["mixtral"], "--max-new-tokens", 6, "--device", "cpu", "--json").stdout
    )
    assert plain["generated"] == report["generated"]
    assert plain["hits"] == plain["misses"] == 0


def test_bad_inputs(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mixtral = models["mixtral"]
    common = ("--max-new-tokens", 2, "--device", "cpu")
    assert_one_error_line(
        run("run", "--model", mixtral, "--offload", "--capacity", 1, *common), "smaller than top-k (2)"
    )
    assert_one_error_line(
        run("run", "--model", mixtral, "--offload", "--gpu-memory", "100000TiB", *common), "the cpu device has"
    )
    assert_one_error_line(run("run", "--model", mixtral, "--offload", "--gpu-memory", "1KiB", *common), "top-k is 2")
    assert_one_error_line(
        run("run", "--model", mixtral, "--offload", *common), "--offload needs --capacity or --gpu-memory"
    )
    assert_one_error_line(run("run", "--model", mixtral, "--offload", "--capacity", 2, "--policy", "belady", *common),
                          "a live cache runs lru, fifo, lfu")  # fmt: skip
    assert_one_error_line(run("run", "--model", mixtral, "--offload", "--capacity", 2, "--policy", "lru+markov", *common),
                          "needs --predictor")  # fmt: skip
    dense = save_tiny_model("llama", tmp_path / "llama")
    assert_one_error_line(run("run", "--model", dense, "--offload", "--capacity", 2, *common), "MoE")
    trace = tmp_path / "ds"
    assert run("record", "--model", models["deepseek_v3"], "--out", trace, "--max-new-tokens", 4).exit_code == 0
    assert (
        run("predict", "path", trace, "--method", "markov", "--split", "0.8", "--save", tmp_path / "ds.pt").exit_code
        == 0
    )
    assert_one_error_line(run("run", "--model", mixtral, "--offload", "--capacity", 2, "--policy", "lru+markov",
                              "--predictor", tmp_path / "ds.pt", *common), "saved for a model with 3 MoE layers × 8 experts")  # fmt: skip
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_error_line(run("run", "--model", mixtral, "--record", existing, *common), "not empty")
    assert (existing / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidArgumentError, match="capacity 9 is more than"):
        Offloader(tiny_model("mixtral"), OffloadConfig(capacity=9), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_same_output_same_counts_and_memory_falls_with_capacity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same checks with real device slots, pinned host buffers and a copy stream; and peak device
    memory falls as the cache shrinks (experts big enough for it to show: 3 MiB each)."""
    path = save_tiny_model("mixtral", tmp_path / "m", num_hidden_layers=4, hidden_size=256, intermediate_size=1024)
    options = {"max_new_tokens": 16, "batch_size": 2, "device": "cuda", "dtype": "float32"}
    plain = run_model(str(path), PROMPTS, **options)
    peaks = {}
    for capacity in (4, 3, 2):
        report = run_model(
            str(path), PROMPTS, offload=True, capacity=capacity, record=tmp_path / f"run{capacity}", **options
        )
        assert report.generated == plain.generated
        assert (report.hits, report.misses) == replayed(tmp_path / f"run{capacity}", "lru", capacity)
        peaks[capacity] = report.peak_memory_bytes
    assert peaks[4] > peaks[3] > peaks[2]
    ahead = run_model(str(path), PROMPTS, offload=True, policy="lru+pregate", capacity=2, compare=True,
                      max_new_tokens=16, device="cuda", dtype="float32")  # fmt: skip
    assert ahead.baseline is not None and ahead.baseline["identical"] and ahead.prefetch_loads > 0

"""Live offloading (`moetrace run --offload`) on the CPU: host tensors stand in for device slots, the
code path is the GPU's. Truths: the plain model's own logits and greedy output, `simulate`'s compiled
replay of the run's own trace, counts read from that trace (need-sets, decode rows), expert sizes
and prefetch outcomes computed by hand from the models' configs, and the cache's slot bookkeeping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_cli import assert_one_error_line, run
from tiny_models import EOS_TOKEN_ID, PAD_TOKEN_ID, save_tiny_model, tiny_model

import moetrace
from moetrace.errors import InvalidArgumentError
from moetrace.models.generation import generate, left_pad
from moetrace.offload.run import run_model
from moetrace.offload.runtime import OffloadConfig, Offloader
from moetrace.sim.simulate import SimConfig, simulate

PROMPTS = ["def main():", "import os, sys", "The quick brown fox jumps over", "x = [1, 2, 3]", "Hi"]
# one routed expert of each tiny model, counted by hand from tests/tiny_models.py's configs: gate, up and
# down projections of hidden 32 × the expert width, in float32 (save_tiny_model's dtype)
EXPERT_BYTES = {"mixtral": 3 * 32 * 64 * 4, "qwen3_moe": 3 * 32 * 32 * 4, "deepseek_v3": 3 * 32 * 16 * 4}


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("offload_models")
    return {family: save_tiny_model(family, root / family, num_hidden_layers=4)
            for family in ("mixtral", "qwen3_moe", "deepseek_v3")}  # fmt: skip


def replayed(trace_dir, policy: str, capacity: int, pool: bool = False) -> tuple[int, int]:
    result = simulate(moetrace.open_trace(trace_dir), SimConfig(policies=(policy,), capacities=(capacity,), pool=pool))
    return result.results[0]["hits"], result.results[0]["misses"]


def need_sets(trace_dir) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """The distinct experts of each (forward, MoE layer), forward-major, as the run's own trace lists them."""
    routes = moetrace.open_trace(trace_dir).routes(["step", "layer", "experts"]).to_pandas()
    return [sorted(set(np.concatenate(group.tolist()).tolist()))
            for _, group in routes.groupby(["step", "layer"], sort=True)["experts"]]  # fmt: skip


def decode_rows(trace_dir) -> int:  # type: ignore[no-untyped-def]
    """Tokens the decode forwards computed, as the recorder saw them at the first MoE layer."""
    trace = moetrace.open_trace(trace_dir)
    routes = trace.routes(["phase", "layer"]).to_pandas()
    return int(((routes["phase"] == "decode") & (routes["layer"] == trace.meta.model.moe_layers[0])).sum())


@pytest.mark.parametrize(
    ("family", "policy", "capacity", "pool"),
    [("mixtral", "lru", 3, False), ("qwen3_moe", "fifo", 2, False), ("deepseek_v3", "lfu", 5, False),
     ("deepseek_v3", "lru", 12, True), ("mixtral", "sieve", 3, False), ("qwen3_moe", "s3fifo", 3, False),
     ("deepseek_v3", "arc", 10, True)],
)  # fmt: skip
def test_offloaded_run_generates_the_same_and_counts_what_simulate_counts(
    models, family, policy, capacity, pool, tmp_path
) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    report = run_model(str(models[family]), PROMPTS, offload=True, policy=policy, capacity=capacity, pool=pool,
                       compare=True, max_new_tokens=12, batch_size=2, device="cpu", record=tmp_path / "run")  # fmt: skip
    assert report.baseline is not None and report.baseline["identical"]
    assert report.generated == report.baseline["generated"]
    assert report.decode_tokens == decode_rows(tmp_path / "run") > 0
    assert report.misses > 0 and report.hits > 0  # capacity below the number of experts: both happen
    assert (report.hits, report.misses) == replayed(tmp_path / "run", policy, capacity, pool)
    assert report.hits + report.misses == sum(map(len, need_sets(tmp_path / "run")))
    assert report.loads == report.misses  # demand loads only, one per miss
    assert report.prefetch_loads == report.useful_prefetches == report.wasted_prefetches == 0
    assert 0 < report.decode_bytes < report.bytes  # the cold start is in prefill
    assert report.bytes == report.loads * EXPERT_BYTES[family]


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
    assert report.wasted_prefetches == replay["wasted_loads"]


def _generate(model, prompts: list[list[int]], new_tokens: int):  # type: ignore[no-untyped-def]
    ids, mask = left_pad(prompts, PAD_TOKEN_ID, torch.device("cpu"))
    with torch.inference_mode():
        return generate(model, ids, mask, new_tokens, PAD_TOKEN_ID, [EOS_TOKEN_ID])


def test_no_slot_leaks_after_a_long_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Many batches, long generations, a pool smaller than two layers' experts: after every forward
    each slot holds one expert at most and each resident exactly one slot; the slots never grow; every
    expert the run's own trace lists as needed was served once per forward (a hit or a miss)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 259, size=int(rng.integers(2, 12))).tolist() for _ in range(12)]
    plain = tiny_model("qwen3_moe", num_hidden_layers=4)
    model = tiny_model("qwen3_moe", num_hidden_layers=4)
    offloader = Offloader(model, OffloadConfig(policy="lru", capacity=6, pool=True), torch.device("cpu"),
                          eos_token_ids=(EOS_TOKEN_ID,))  # fmt: skip
    slots_before = [s.buffer.data_ptr() for s in offloader.slots]
    checks = []
    model.register_forward_hook(lambda *_: checks.append(offloader.cache.check() is None))
    with moetrace.tracing(model, tmp_path / "t", eos_token_ids=[EOS_TOKEN_ID]) as tracer:
        for start in range(0, len(prompts), 4):
            batch = prompts[start : start + 4]
            tracer.begin_batch(range(start, start + len(batch)))
            assert torch.equal(_generate(model, batch, 40), _generate(plain, batch, 40))
    stats = offloader.finish()
    assert len(checks) > 100 and all(checks)
    assert [s.buffer.data_ptr() for s in offloader.slots] == slots_before
    assert len(offloader.cache.slot_of[0]) == 6
    needs = need_sets(tmp_path / "t")
    assert stats.hits + stats.misses == sum(map(len, needs))
    assert stats.streamed == sum(max(0, len(need) - 6) for need in needs) == 0  # no need-set outgrows the pool


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
    assert report.wasted_prefetches == replay["wasted_loads"]


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
                          "a live cache cannot run 'belady'")  # fmt: skip
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


# -- expert layouts beyond Mixtral's: GPT-OSS (biases, transposed, interleaved gate/up), Nemotron-H (no gate) --


def _gpt_oss(layer1_router_bias: tuple[float, ...] | None = None):  # type: ignore[no-untyped-def]
    """Tiny GPT-OSS with non-zero expert biases (the library initialises them to zero) and an expert
    width (24) unlike the hidden size (32), so a dropped bias or a wrong transpose shows. With
    `layer1_router_bias`, layer 1's router ignores its input: every token picks the top two biases."""
    model = tiny_model("gpt_oss", intermediate_size=24)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in ("gate_up_proj_bias", "down_proj_bias"):
            for layer in model.model.layers:
                bias = getattr(layer.mlp.experts, name)
                bias.copy_(torch.randn(bias.shape, generator=generator, dtype=bias.dtype) * 0.5)
        if layer1_router_bias is not None:
            router = model.model.layers[1].mlp.router
            router.weight.zero_()
            router.bias.copy_(torch.tensor(layer1_router_bias, dtype=router.bias.dtype))
    return model


def _nemotron_h():  # type: ignore[no-untyped-def]
    """Tiny Nemotron-H (attention and MoE layers only, no Mamba): experts with up and down projections
    and no gate, built from transformers' own config."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = NemotronHConfig(
        vocab_size=259, hidden_size=32, layers_block_type=["attention", "moe", "attention", "moe"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64, n_routed_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=24, moe_shared_expert_intermediate_size=16, n_shared_experts=1,
        max_position_embeddings=256, use_mamba_kernels=False, experts_implementation="eager",
        pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=EOS_TOKEN_ID,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NemotronHForCausalLM(config)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a router that really chooses (the library's init is nearly flat)
            for module in model.modules():
                if type(module).__name__ == "NemotronHTopkRouter":
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD_TOKEN_ID, EOS_TOKEN_ID
    return model.to(torch.float64).eval()


BATCH = [[1, 40, 77, 101, 9, 33, 12], [1, 200, 13], [1, 5, 250, 7, 7, 7, 7, 80, 81]]


def _logits(model):  # type: ignore[no-untyped-def]
    ids, mask = left_pad(BATCH, PAD_TOKEN_ID, torch.device("cpu"))
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


@pytest.mark.parametrize(
    ("build", "layout", "tolerance"),
    # Nemotron-H's own experts sum in the routing weights' float32; the offloaded ones in float64
    [(_gpt_oss, {"is_transposed": True, "has_bias": True, "has_gate": True}, 1e-12),
     (_nemotron_h, {"is_transposed": False, "has_bias": False, "has_gate": False}, 1e-6)],
    ids=["gpt_oss", "nemotron_h"],
)  # fmt: skip
def test_offloaded_experts_compute_what_the_model_computes(build, layout, tolerance) -> None:  # type: ignore[no-untyped-def]
    """Two slots per layer of four experts (a prefill need-set streams what does not fit): the logits of
    every real position and the greedy output equal the plain model's."""
    plain, offloaded = build(), build()
    experts = [b.module for b in Offloader(offloaded, OffloadConfig(policy="lru", capacity=2), torch.device("cpu"),
                                           eos_token_ids=(EOS_TOKEN_ID,)).blocks]  # fmt: skip
    assert all({name: getattr(e, name) for name in layout} == layout for e in experts)  # the branch under test
    expected = _logits(plain)
    torch.testing.assert_close(_logits(offloaded), expected, rtol=0, atol=tolerance)
    assert torch.equal(_generate(offloaded, BATCH, 10), _generate(plain, BATCH, 10))
    if layout["has_bias"]:  # the biases matter far beyond the tolerance: dropping them would fail above
        unbiased = build()
        with torch.no_grad():
            for module in unbiased.modules():
                if hasattr(module, "down_proj_bias"):
                    module.gate_up_proj_bias.zero_()
                    module.down_proj_bias.zero_()
        assert (_logits(unbiased) - expected).abs().max() > 1e4 * tolerance


@pytest.mark.parametrize("pool", [False, True], ids=["per-layer", "pool"])
def test_experts_stream_when_one_request_needs_more_than_every_slot(models, pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Capacity = top-k (2) with batches of three prompts: prefill need-sets of up to four experts. A
    request with need-set N finds C − |N ∩ cache| slots it may take for its |N| − |N ∩ cache| misses,
    so max(0, |N| − C) of them stream, whatever the policy and the cache's state: counted here from
    the run's own trace. The output stays the plain model's."""
    report = run_model(str(models["qwen3_moe"]), PROMPTS, offload=True, policy="lru", capacity=2, pool=pool,
                       compare=True, max_new_tokens=6, batch_size=3, device="cpu", record=tmp_path / "run")  # fmt: skip
    assert report.baseline is not None and report.baseline["identical"]
    needs = need_sets(tmp_path / "run")
    assert report.streamed == sum(max(0, len(need) - 2) for need in needs) > 0
    assert report.loads == report.misses  # a streamed miss is copied too, once
    assert (report.hits, report.misses) == replayed(tmp_path / "run", "lru", 2, pool)


def _save(model, path):  # type: ignore[no-untyped-def]
    from moetrace.models.tokenizer import byte_level_tokenizer

    model.to(torch.float32).save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path


def test_prefetches_counted_useful_and_wasted_by_hand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GPT-OSS whose layer-1 router always picks experts 0 and 1 (its bias decides), two slots per layer,
    prefetching with a popularity predictor:

    - fitted on a twin whose layer 1 always picks 2 and 3: after layer 0 of every forward, 2 and 3 are
      loaded into layer 1's slots (evicting 0 and 1), and layer 1 then evicts both unused to load 0 and
      1 again: 2 prefetch loads per forward, all wasted, none useful;
    - fitted on the model's own trace: 0 and 1 are loaded once, ahead of the first forward's layer 1,
      used there, and resident ever after: 2 prefetch loads in all, both useful."""
    twin = _gpt_oss(layer1_router_bias=(-3.0, -3.0, 3.0, 2.0))
    model = _save(_gpt_oss(layer1_router_bias=(3.0, 2.0, -3.0, -3.0)), tmp_path / "model")
    prompts = [[1, 40, 77, 101, 9], [1, 200, 13], [1, 5, 250, 7]]
    options = {"offload": True, "policy": "lru+popularity", "capacity": 2, "max_new_tokens": 5, "device": "cpu"}
    for name, source in (("wrong", twin), ("right", str(model))):
        trace = moetrace.record(source, prompts, tmp_path / f"{name}-trace", max_new_tokens=5)
        assert {tuple(sorted(e)) for e in trace.routes(["layer", "experts"]).to_pandas().query("layer == 1").experts} == (
            {(2, 3)} if name == "wrong" else {(0, 1)}
        )  # fmt: skip
        saved = run("predict", "path", tmp_path / f"{name}-trace", "--method", "popularity", "--split", "0.8",
                    "--save", tmp_path / f"{name}.pt")  # fmt: skip
        assert saved.exit_code == 0, saved.output
    wrong = run_model(str(model), prompts, predictor=tmp_path / "wrong.pt", record=tmp_path / "run", **options)
    forwards = len(need_sets(tmp_path / "run")) // 2  # two MoE layers
    assert forwards == sum(len(g) for g in wrong.generated)  # one forward per new token at batch size 1
    assert (wrong.prefetch_loads, wrong.useful_prefetches, wrong.wasted_prefetches) == (2 * forwards, 0, 2 * forwards)
    right = run_model(str(model), prompts, predictor=tmp_path / "right.pt", **options)
    assert right.generated == wrong.generated
    assert (right.prefetch_loads, right.useful_prefetches, right.wasted_prefetches) == (2, 2, 0)
    assert right.misses == wrong.misses - 2 * forwards  # layer 1 missed both experts in every forward before


def _with_end_of_sequence(model, folder, eos: int):  # type: ignore[no-untyped-def]
    folder = shutil.copytree(model, folder)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token_id"] = eos
        (folder / name).write_text(json.dumps(config))
    return str(folder)


def test_decode_tokens_are_what_the_decode_forwards_computed(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With an end-of-sequence id outside the vocabulary, each prompt's decode forwards compute
    max_new_tokens − 1 tokens (the first new token comes out of the prefill). Then, with an end of
    sequence that some rows generate early, a row computes up to its end only: counted by hand from the
    full-length outputs, and by the recorder in the run's own trace."""
    prompts = [[1, 40, 77], [1, 200, 13, 55, 66], [1, 5], [1, 9, 8, 7, 6, 5], [1, 120]]
    endless = _with_end_of_sequence(models["qwen3_moe"], tmp_path / "endless", 300)
    full = run_model(endless, prompts, max_new_tokens=8, batch_size=2, device="cpu")
    assert [len(row) for row in full.generated] == [8] * len(prompts)
    assert full.decode_tokens == len(prompts) * (8 - 1)
    stop = full.generated[0][2]
    ends = [row.index(stop) + 1 if stop in row else len(row) for row in full.generated]
    assert len(set(ends)) > 1  # rows of a batch finish at different times
    stops = _with_end_of_sequence(models["qwen3_moe"], tmp_path / "stops", stop)
    report = run_model(stops, prompts, offload=True, capacity=2, max_new_tokens=8, batch_size=2, device="cpu",
                       record=tmp_path / "run")  # fmt: skip
    assert [len(row) for row in report.generated] == ends
    assert report.decode_tokens == sum(end - 1 for end in ends) == decode_rows(tmp_path / "run")


@pytest.mark.parametrize("family", ["dbrx", "llama4"])
def test_adapter_families_record_but_are_refused_by_offloading(family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As the README says: DBRX and Llama 4 are recorded through moetrace's own adapters (tests/test_record.py
    checks what they record), but their experts are not on transformers' experts interface, so
    `run --offload` refuses them in one line."""
    model = save_tiny_model(family, tmp_path / family)
    result = run("run", "--model", model, "--offload", "--capacity", 2, "--max-new-tokens", 2, "--device", "cpu")
    assert_one_error_line(result, "experts interface")


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

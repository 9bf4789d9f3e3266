"""`moetrace.record` against what the models themselves report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import EOS_TOKEN_ID, moe_spec, tiny_model

import moetrace
from moetrace.errors import NotAMoEModelError
from moetrace.models.generation import generate, left_pad

# prompts of different lengths, so that a batch is left-padded
PROMPTS = [[1, 40, 77, 101, 9], [1, 200, 13, 55, 66, 71, 90, 3, 18], [1, 5, 250], [1, 120, 121, 122, 123, 124, 125]]
TOPK_OF_LOGITS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "dbrx", "llama4"]


def _reference_generation(model, prompts, max_new_tokens, eos=EOS_TOKEN_ID):  # type: ignore[no-untyped-def]
    """Untraced greedy generation, one batch: each prompt's generated tokens up to (not including) EOS."""
    input_ids, mask = left_pad(prompts, 0, torch.device("cpu"))
    with torch.inference_mode():
        output = generate(model, input_ids, mask, max_new_tokens, 0, [eos])
    generated = []
    for row in output[:, input_ids.shape[1] :].tolist():
        generated.append(row[: row.index(eos)] if eos in row else row)
    return generated


def _routes_of(trace, seq_id, layer):  # type: ignore[no-untyped-def]
    routes = trace.routes_arrays()
    rows = np.flatnonzero((routes["seq_id"] == seq_id) & (routes["layer"] == layer))
    rows = rows[np.argsort(routes["pos"][rows])]
    return {name: values[rows] for name, values in routes.items()}


@pytest.mark.parametrize("family", TOPK_OF_LOGITS)
def test_recorded_experts_are_the_models_own_top_k(family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(family)
    spec = moe_spec(family)
    max_new_tokens = 6
    trace = moetrace.record(model, PROMPTS, tmp_path / "t", max_new_tokens=max_new_tokens, batch_size=4)
    generated = _reference_generation(model, PROMPTS, max_new_tokens)
    assert trace.meta.model.moe_layers == spec.moe_layers
    assert (trace.meta.model.num_experts, trace.meta.model.top_k) == (spec.num_experts, spec.top_k)
    for seq_id, prompt in enumerate(PROMPTS):
        # every token that was fed to the model: the prompt, then each generated token but the last
        fed = prompt + generated[seq_id][: max_new_tokens - 1]
        with torch.inference_mode():
            router_logits = model(torch.tensor([fed]), output_router_logits=True).router_logits
        for layer, logits in zip(spec.moe_layers, router_logits):
            expected = torch.topk(logits, spec.top_k, dim=-1).indices.numpy()
            got = _routes_of(trace, seq_id, layer)
            np.testing.assert_array_equal(got["pos"], np.arange(len(fed)))
            np.testing.assert_array_equal(got["token_id"], fed)
            np.testing.assert_array_equal(got["experts"], expected, err_msg=f"{family} seq {seq_id} layer {layer}")
            assert list(got["phase"]) == ["prefill"] * len(prompt) + ["decode"] * (len(fed) - len(prompt))
            # one batch: prefill is step 0, then one step per decode forward
            np.testing.assert_array_equal(got["step"], np.maximum(np.arange(len(fed)) - len(prompt) + 1, 0))


def _deepseek_selection(logits: torch.Tensor, router: torch.nn.Module) -> np.ndarray:
    """DeepSeek-V3's routing rebuilt from its router logits: sigmoid + bias, top groups, then top-k."""
    scores = logits.sigmoid() + router.e_score_correction_bias
    groups = scores.view(len(scores), router.num_group, -1)
    group_score = groups.topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(router.topk_group, dim=-1).indices, 1)
    masked = groups.masked_fill(keep[..., None] == 0, float("-inf")).reshape(len(scores), -1)
    return np.sort(masked.topk(router.top_k, dim=-1).indices.numpy(), axis=1)


def test_deepseek_v3_group_limited_routing_is_what_its_experts_receive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("deepseek_v3")
    spec = moe_spec("deepseek_v3")
    trace = moetrace.record(model, PROMPTS, tmp_path / "t", max_new_tokens=5, batch_size=4)
    generated = _reference_generation(model, PROMPTS, 5)
    plain_top_k_differs = False
    for seq_id, prompt in enumerate(PROMPTS):
        fed = prompt + generated[seq_id][:4]
        with torch.inference_mode():
            router_logits = model(torch.tensor([fed]), output_router_logits=True).router_logits
        for layer, logits in zip(spec.moe_layers, router_logits):
            router = model.model.layers[layer].mlp.gate
            expected = _deepseek_selection(logits, router)
            got = np.sort(_routes_of(trace, seq_id, layer)["experts"], axis=1)
            np.testing.assert_array_equal(got, expected)
            plain = np.sort(torch.topk(logits, spec.top_k, dim=-1).indices.numpy(), axis=1)
            plain_top_k_differs |= bool((plain != expected).any())
    assert plain_top_k_differs, "the test model's group limit and bias should change some selections"


def test_load_equals_route_counts(stand_in_trace) -> None:  # type: ignore[no-untyped-def]
    routes = stand_in_trace.routes_arrays(["step", "layer", "experts"])
    load = stand_in_trace.load_df()
    assert len(stand_in_trace.load_parts) > 0
    layers = stand_in_trace.meta.model.moe_layers
    num_experts = stand_in_trace.meta.model.num_experts
    counted = np.zeros((routes["step"].max() + 1, max(layers) + 1, num_experts), np.int64)
    np.add.at(counted, (routes["step"][:, None], routes["layer"][:, None], routes["experts"]), 1)
    stored = np.zeros_like(counted)
    stored[load.step, load.layer, load.expert] = load.tokens
    np.testing.assert_array_equal(stored, counted)
    assert (load.tokens > 0).all()


def test_a_finished_sequence_stops_contributing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("mixtral")
    max_new_tokens = 8
    # make the second token that prompt 0 generates its end-of-sequence token
    stop_token = _reference_generation(model, PROMPTS[:2], max_new_tokens, eos=-1)[0][1]
    model.generation_config.eos_token_id = stop_token
    trace = moetrace.record(model, PROMPTS[:2], tmp_path / "t", max_new_tokens=max_new_tokens, batch_size=2)
    generated = _reference_generation(model, PROMPTS[:2], max_new_tokens, eos=stop_token)
    assert len(generated[0]) == 1
    routes = trace.routes_arrays(["seq_id", "pos", "layer", "token_id"])
    for seq_id, prompt in enumerate(PROMPTS[:2]):
        rows = (routes["layer"] == 0) & (routes["seq_id"] == seq_id)
        # fed: the prompt and every generated token before the last one or the stop token
        fed = prompt + generated[seq_id][: max_new_tokens - 1]
        np.testing.assert_array_equal(routes["token_id"][rows], fed)
        assert stop_token not in routes["token_id"][rows][len(prompt) :]


def test_padding_is_never_recorded_and_seq_ids_follow_the_prompt_file_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("qwen3_moe")
    trace = moetrace.record(model, PROMPTS, tmp_path / "t", max_new_tokens=0, batch_size=3)
    routes = trace.routes_arrays(["seq_id", "pos", "step", "layer", "token_id"])
    for seq_id, prompt in enumerate(PROMPTS):
        rows = (routes["seq_id"] == seq_id) & (routes["layer"] == 0)
        np.testing.assert_array_equal(np.sort(routes["pos"][rows]), np.arange(len(prompt)))
        assert 0 not in routes["token_id"][rows]  # the pad id
        assert set(routes["step"][rows]) == {seq_id // 3}  # batches of 3: prompts 0-2 are step 0, prompt 3 step 1
    assert set(trace.dense_load().phases) == {"prefill"}


def test_expert_bytes_come_from_the_models_expert_parameters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("mixtral", dtype=torch.float32)
    trace = moetrace.record(model, PROMPTS[:1], tmp_path / "t", max_new_tokens=1)
    config = model.config
    # gate, up and down projections of one expert, 4 bytes each
    assert trace.meta.model.expert_bytes == 3 * config.hidden_size * config.intermediate_size * 4
    assert trace.meta.model.dtype == "float32"


def test_tracing_a_user_driven_generate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("olmoe")
    input_ids, mask = left_pad(PROMPTS[:2], 0, torch.device("cpu"))
    with moetrace.tracing(model, tmp_path / "t") as tracer, torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0
        )
        model(input_ids=torch.tensor([PROMPTS[2]]))  # a plain forward: a new sequence
    assert tracer.step == 3 + 1
    trace = moetrace.open_trace(tmp_path / "t")
    assert trace.meta.complete
    routes = trace.routes_arrays(["seq_id", "pos", "layer", "token_id"])
    at_first = routes["layer"] == 0
    assert sorted(set(routes["seq_id"].tolist())) == [0, 1, 2]
    fed_1 = PROMPTS[1] + out[1, input_ids.shape[1] : input_ids.shape[1] + 2].tolist()
    np.testing.assert_array_equal(routes["token_id"][at_first & (routes["seq_id"] == 1)], fed_1)


def test_tracing_leaves_an_incomplete_trace_when_the_block_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("mixtral")
    with pytest.raises(RuntimeError, match="boom"), moetrace.tracing(model, tmp_path / "t"), torch.inference_mode():
        model(input_ids=torch.tensor([PROMPTS[0]]))
        raise RuntimeError("boom")
    with pytest.warns(UserWarning, match="incomplete"):
        trace = moetrace.open_trace(tmp_path / "t")
    assert len(trace.routes()) == len(PROMPTS[0]) * 2


def test_a_model_without_moe_layers_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotAMoEModelError, match="model_type 'llama'.*no MoE layers"):
        moetrace.record(tiny_model("llama"), PROMPTS, tmp_path / "t", max_new_tokens=1)
    assert not (tmp_path / "t").exists()

"""Quick checks of the tiny seeded models in `tests/tiny_models.py`.

Router logits with `output_router_logits=True`, per family (defaults of `tiny_config`), for a batch of
B prompts padded to T tokens. `outputs.router_logits` is a tuple of one tensor per MoE layer, each of
shape (B*T, num_experts), padded positions included; with `return_dict=False` it is the last element of
the output tuple: index 3 of (aux_loss, logits, cache, router_logits) for mixtral, qwen2_moe, qwen3_moe,
olmoe, gpt_oss and dbrx, which add an aux_loss; index 2 of (logits, cache, router_logits) for deepseek_v3
and llama4, which do not (one less without a cache, one more with labels).

    family       MoE layers  router_logits                          top-k(logits) == routing
    mixtral      0, 1        2 x (B*T, 4), model dtype              yes (softmax, top-2)
    qwen2_moe    0, 1        2 x (B*T, 4), model dtype              yes (softmax, top-2)
    qwen3_moe    0, 1        2 x (B*T, 4), model dtype              yes (softmax, top-2, renormalised)
    olmoe        0, 1        2 x (B*T, 4), model dtype              yes (softmax, top-2)
    deepseek_v3  1, 2        2 x (B*T, 8), float32 always           no: top-2 of sigmoid + bias within top-2 of 4 groups
    gpt_oss      0, 1        2 x (B*T, 4), model dtype (with bias)  yes (top-2, then softmax)
    dbrx         0, 1        2 x (B*T, 4), model dtype              yes (softmax, top-2)
    llama4       1, 3        2 x (B*T, 4), model dtype              yes (top-2, then sigmoid)
"""

from __future__ import annotations

import pytest
import torch

try:
    from tests.tiny_models import ALL_FAMILIES, FAMILIES, moe_spec, routers, save_tiny_model, tiny_config, tiny_model
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir-less import mode)
    from tiny_models import ALL_FAMILIES, FAMILIES, moe_spec, routers, save_tiny_model, tiny_config, tiny_model

from moetrace.models.tokenizer import byte_level_tokenizer

PROMPTS = ["Hi", "The quick brown fox"]  # different lengths -> left padding on the first row


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def _batch(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and enc.attention_mask[0, 0] == 0 and enc.attention_mask[1].all()
    return enc.input_ids, enc.attention_mask


def _experts_routing(model, family: str) -> list[torch.Tensor]:
    """Hooks that record, per MoE layer, the (tokens, top_k) expert indices the experts actually receive."""
    got: list[torch.Tensor] = []
    for module in model.modules():
        name = type(module).__name__
        if family == "llama4" and name == "Llama4Router":  # experts see sigmoid(scores); non-selected are 0
            module.register_forward_hook(
                lambda mod, args, out: got.append(torch.nonzero(out[0] > 0)[:, 1].view(-1, mod.top_k))
            )
        elif family != "llama4" and name.endswith("Experts"):  # experts(hidden_states, top_k_index, top_k_weights)
            module.register_forward_pre_hook(lambda mod, args: got.append(args[1].detach().clone()))
    return got


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_builds_generates_and_is_deterministic(family, tokenizer):
    config = tiny_config(family)
    assert config.vocab_size == 259
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)

    rng_before = torch.random.get_rng_state()
    model = tiny_model(family, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "building a model must not touch the global RNG"
    assert not model.training and next(model.parameters()).dtype == torch.float64
    assert next(model.parameters()).device.type == "cpu"

    again = tiny_model(family, seed=0)
    other = tiny_model(family, seed=1)
    a, b, c = model.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{family}: {key} differs between two builds with the same seed"
        if a[key].is_floating_point():
            assert torch.isfinite(a[key]).all(), f"{family}: {key} is not finite"
    assert any(not torch.equal(a[k], c[k]) for k in a), "different seeds should give different weights"

    input_ids, attention_mask = _batch(tokenizer)
    prompt_len = input_ids.shape[1]
    for dtype in (torch.float64, torch.float32):
        m = model if dtype == torch.float64 else tiny_model(family, seed=0, dtype=dtype)
        out = m.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False)
        assert out.shape == (2, prompt_len + 4) and out.max() < 259
        assert torch.equal(out[:, :prompt_len], input_ids)
        # left padding must not change what the short prompt generates
        n_pad = int((attention_mask[0] == 0).sum())
        alone = m.generate(
            input_ids[:1, n_pad:], attention_mask=attention_mask[:1, n_pad:], max_new_tokens=4, do_sample=False
        )
        assert torch.equal(out[0, prompt_len:], alone[0, prompt_len - n_pad :])


@pytest.mark.parametrize("family", FAMILIES)
def test_router_logits_one_per_moe_layer(family, tokenizer):
    model = tiny_model(family)
    spec = moe_spec(family, model.config)
    assert spec is not None and 4 <= spec.num_experts <= 8 and spec.top_k == 2
    assert 0 < len(spec.moe_layers) <= model.config.num_hidden_layers
    assert len(routers(model)) == len(spec.moe_layers)
    for router in routers(model):
        weight = router.layer.weight if family == "dbrx" else router.weight
        assert weight.abs().min() > 0, "router weights must be re-initialised to non-zero values"

    input_ids, attention_mask = _batch(tokenizer)
    routing = _experts_routing(model, family)
    with torch.no_grad():
        out = model(input_ids, attention_mask=attention_mask, output_router_logits=True)
    logits = out.router_logits
    assert isinstance(logits, tuple) and len(logits) == len(spec.moe_layers)
    expected_dtype = torch.float32 if family == "deepseek_v3" else torch.float64
    for layer_logits in logits:
        assert layer_logits.shape == (input_ids.numel(), spec.num_experts)
        assert layer_logits.dtype == expected_dtype
    assert len(routing) == len(spec.moe_layers)

    same = [
        torch.equal(layer_logits.topk(spec.top_k, dim=-1).indices.sort(-1).values, chosen.sort(-1).values)
        for layer_logits, chosen in zip(logits, routing, strict=True)
    ]
    assert all(same) == spec.topk_of_logits_is_routing, same


def test_deepseek_v3_group_limited_routing_with_bias():
    model = tiny_model("deepseek_v3")
    config = model.config
    assert config.n_group > 1 and config.topk_group < config.n_group and config.first_k_dense_replace == 1
    assert type(model.model.layers[0].mlp).__name__ == "DeepseekV3MLP"
    assert all(type(layer.mlp).__name__ == "DeepseekV3MoE" for layer in model.model.layers[1:])
    for router in routers(model):
        assert (router.e_score_correction_bias != 0).all()

    def select(logits, bias, n_group, topk_group):
        scores = logits.sigmoid() + bias
        per_group = scores.view(-1, n_group, config.n_routed_experts // n_group)
        groups = per_group.topk(2, dim=-1).values.sum(-1).topk(topk_group, dim=-1).indices
        keep = torch.zeros(scores.shape[0], n_group, dtype=torch.bool).scatter_(1, groups, True)
        keep = keep.repeat_interleave(config.n_routed_experts // n_group, dim=-1)
        return scores.masked_fill(~keep, float("-inf")).topk(config.num_experts_per_tok, dim=-1).indices.sort(-1).values

    input_ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(0))
    routing = _experts_routing(model, "deepseek_v3")
    with torch.no_grad():
        out = model(input_ids, output_router_logits=True)
    for logits, chosen, router in zip(out.router_logits, routing, routers(model), strict=True):
        bias = router.e_score_correction_bias  # float64 here: added to float32 sigmoid scores, as the model does
        full = select(logits, bias, config.n_group, config.topk_group)
        assert torch.equal(full, chosen.sort(-1).values)
        assert not torch.equal(full, select(logits, torch.zeros_like(bias), config.n_group, config.topk_group))
        assert not torch.equal(full, select(logits, bias, 1, 1))  # the group limit bites too


def test_llama4_interleaves_dense_and_moe_layers():
    model = tiny_model("llama4")
    kinds = [type(layer.feed_forward).__name__ for layer in model.model.layers]
    assert kinds == ["Llama4TextMLP", "Llama4TextMoe", "Llama4TextMLP", "Llama4TextMoe"]
    assert moe_spec("llama4").moe_layers == (1, 3)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "llama"])
def test_save_tiny_model_round_trips(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(family, tmp_path / family)
    loaded = AutoModelForCausalLM.from_pretrained(path, experts_implementation="eager")
    reference = tiny_model(family, dtype=torch.float32)
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == 259
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)

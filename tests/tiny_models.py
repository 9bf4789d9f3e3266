"""Tiny, seeded `transformers` causal-LM models built from configs, for tests: no downloads.

Every model has vocab_size 259, which matches `moetrace.models.tokenizer.byte_level_tokenizer()`
(pad=0, bos=1, eos=2), and runs `generate()` on CPU in float32 and float64 with left padding.

    from tiny_models import FAMILIES, tiny_config, tiny_model, save_tiny_model   # tests/ is on sys.path

    model = tiny_model("mixtral", seed=0)                 # eval(), CPU, float64
    cfg = tiny_config("qwen3_moe", num_hidden_layers=4)  # overrides go straight into the config
    path = save_tiny_model("olmoe", tmp_path / "olmoe")  # model + tokenizer, for from_pretrained

Routing is made non-degenerate after the library's own init: every router/gate weight (and GPT-OSS's
router bias) is re-drawn from a seeded normal (std `ROUTER_STD`, or `DEEPSEEK_ROUTER_STD` for
DeepSeek-V3's sigmoid router), so top-k is well defined and ties are (almost surely) impossible;
DeepSeek-V3's `e_score_correction_bias` is filled with seeded values (std `DEEPSEEK_BIAS_STD`) so that
the bias, and the group limit, really change the selection. All of this runs inside
`torch.random.fork_rng()`: building a model leaves the caller's global RNG state untouched, and the
same seed gives bit-identical weights.

Per family (defaults; see `_CONFIGS` and `moe_spec()`):

    family       class                   layers  MoE layers  experts  top_k  notes
    mixtral      MixtralForCausalLM      2       0, 1        4        2
    qwen2_moe    Qwen2MoeForCausalLM     2       0, 1        4        2      + gated shared expert
    qwen3_moe    Qwen3MoeForCausalLM     2       0, 1        4        2      norm_topk_prob=True
    olmoe        OlmoeForCausalLM        2       0, 1        4        2
    deepseek_v3  DeepseekV3ForCausalLM   3       1, 2        8        2      + shared expert; 4 groups of 2
                                                                            experts, top-2 groups; layer 0 dense
    gpt_oss      GptOssForCausalLM       2       0, 1        4        2      router has a bias; sliding/full attn
    dbrx         DbrxForCausalLM         2       0, 1        4        2
    llama4       Llama4ForCausalLM       4       1, 3        4        2      + shared expert; layers 0, 2 dense
    llama        LlamaForCausalLM        2       -           -        -      dense

`model(..., output_router_logits=True).router_logits` is a tuple with one tensor per MoE layer, in layer
order, each of shape (batch * seq_len, num_experts) -- padded positions included -- in the model dtype,
except DeepSeek-V3's, which are float32 whatever the model dtype. With `return_dict=False` it is the
last element of the output tuple. For every family except DeepSeek-V3, top-k of those logits is the
expert selection; see `MoESpec.topk_of_logits_is_routing`.

Quirks:
- MoE experts use `experts_implementation="eager"` (the per-expert loop of the modeling file): the default
  "grouped_mm" kernel has no float64 on CPU. `save_pretrained` does not store it, so load saved float64
  models with `from_pretrained(path, dtype=torch.float64, experts_implementation="eager")`.
- "float64" is not float64 throughout: RMSNorm variance, RoPE tables and most router softmaxes/sigmoids
  run in float32 inside transformers, so float64 outputs agree with themselves to ~1e-8, not 1e-15.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

VOCAB_SIZE = 259
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2

ROUTER_STD = 0.5
DEEPSEEK_ROUTER_STD = 0.2
DEEPSEEK_BIAS_STD = 0.1

FAMILIES: tuple[str, ...] = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "dbrx",
    "llama4",
)
DENSE_FAMILIES: tuple[str, ...] = ("llama",)
ALL_FAMILIES: tuple[str, ...] = FAMILIES + DENSE_FAMILIES

_TOKENS = {"pad_token_id": PAD_TOKEN_ID, "bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}
_COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    # The default "grouped_mm" experts kernel has no float64 on CPU; "eager" is the per-expert loop of the
    # modeling file. Not saved by save_pretrained: pass experts_implementation="eager" to from_pretrained too.
    "experts_implementation": "eager",
    **_TOKENS,
}

# family -> (config class name, model class name, config kwargs)
_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {**_COMMON, "intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            **_COMMON,
            "intermediate_size": 64,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": False,
        },
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            **_COMMON,
            "head_dim": 8,
            "intermediate_size": 64,
            "moe_intermediate_size": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        },
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {**_COMMON, "intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": False},
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            **_COMMON,
            "num_hidden_layers": 3,
            "num_key_value_heads": 4,  # MLA: no GQA
            "intermediate_size": 64,
            "moe_intermediate_size": 16,
            "n_shared_experts": 1,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 4,
            "topk_group": 2,
            "first_k_dense_replace": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 2.5,
            "kv_lora_rank": 16,
            "q_lora_rank": 24,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
            "num_mtp_layers": 0,
        },
    ),
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        {
            **_COMMON,
            "head_dim": 8,
            "intermediate_size": 32,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            # the default YaRN (factor 32 over 4096 positions) warns against max_position_embeddings=256
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 2.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 128,
            },
        },
    ),
    "dbrx": (
        "DbrxConfig",
        "DbrxForCausalLM",
        {
            "vocab_size": VOCAB_SIZE,
            "d_model": 32,
            "n_heads": 4,
            "n_layers": 2,
            "max_seq_len": 256,
            # DbrxAttention reads attn_config.rope_theta, which DbrxAttentionConfig does not declare
            "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
            "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
            "tie_word_embeddings": False,
            "experts_implementation": "eager",
            **_TOKENS,
        },
    ),
    "llama4": (
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        {
            **_COMMON,
            "num_hidden_layers": 4,
            "head_dim": 8,
            "intermediate_size": 32,  # expert (and shared-expert) width
            "intermediate_size_mlp": 64,  # dense-layer width
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "interleave_moe_layer_step": 2,  # MoE layers 1, 3; dense layers 0, 2
            "attention_chunk_size": 16,
            "no_rope_layer_interval": 4,  # layer 3 has no RoPE
        },
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {**_COMMON, "intermediate_size": 64},
    ),
}


def _check_family(family: str) -> None:
    if family not in _CONFIGS:
        raise ValueError(f"unknown family {family!r}; expected one of {ALL_FAMILIES}")


def tiny_config(family: str, **overrides: Any) -> PretrainedConfig:
    """A tiny `PretrainedConfig` for `family`; `overrides` replace or add config kwargs."""
    import transformers

    _check_family(family)
    config_name, _, kwargs = _CONFIGS[family]
    kwargs = copy.deepcopy(kwargs)
    kwargs.update(overrides)
    return getattr(transformers, config_name)(**kwargs)


class MoESpec(NamedTuple):
    """What a tiny model's routing looks like."""

    moe_layers: tuple[int, ...]  # decoder-layer indices whose MLP is a routed MoE block
    num_experts: int
    top_k: int
    # True when top-k of the `output_router_logits` tensors is exactly the expert selection the experts
    # receive (softmax/top-k and sigmoid-after-top-k routers); False for DeepSeek-V3, whose selection is
    # top-k of sigmoid(logits) + e_score_correction_bias restricted to the top `topk_group` of `n_group` groups.
    topk_of_logits_is_routing: bool


def moe_spec(family: str, config=None) -> MoESpec | None:
    """The `MoESpec` of `family` under `config` (default: `tiny_config(family)`); None for dense families."""
    _check_family(family)
    if family in DENSE_FAMILIES:
        return None
    c = tiny_config(family) if config is None else config
    n = c.num_hidden_layers
    if family == "deepseek_v3":
        layers = range(c.first_k_dense_replace, n)
    elif family == "llama4":
        layers = sorted(c.moe_layers)
    elif family in ("qwen2_moe", "qwen3_moe"):
        layers = [
            i for i in range(n)
            if i not in c.mlp_only_layers and c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0
        ]  # fmt: skip
    else:
        layers = range(n)
    if family == "dbrx":
        num_experts, top_k = c.ffn_config.moe_num_experts, c.ffn_config.moe_top_k
    elif family in ("qwen2_moe", "qwen3_moe", "olmoe"):
        num_experts, top_k = c.num_experts, c.num_experts_per_tok
    else:  # mixtral, gpt_oss, llama4: num_local_experts; deepseek_v3: alias of n_routed_experts
        num_experts, top_k = c.num_local_experts, c.num_experts_per_tok
    return MoESpec(tuple(layers), num_experts, top_k, family != "deepseek_v3")


def moe_layer_indices(family: str, config=None) -> list[int]:
    """Decoder-layer indices that are MoE layers for `family` under `config` (default: `tiny_config(family)`)."""
    spec = moe_spec(family, config)
    return [] if spec is None else list(spec.moe_layers)


def routers(model) -> list[torch.nn.Module]:
    """The router/gate modules of `model`, in layer order (one per MoE layer)."""
    return [module for _, module in _router_modules(model)]


def _router_modules(model) -> list[tuple[str, torch.nn.Module]]:
    names = {"MixtralTopKRouter", "Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter", "OlmoeTopKRouter",
             "DeepseekV3TopkRouter", "GptOssTopKRouter", "DbrxRouter", "Llama4Router"}  # fmt: skip
    return [(name, module) for name, module in model.named_modules() if type(module).__name__ in names]


def _router_weight(module: torch.nn.Module) -> torch.nn.Parameter:
    return module.layer.weight if type(module).__name__ == "DbrxRouter" else module.weight


@torch.no_grad()
def _make_routing_nondegenerate(model, family: str, generator: torch.Generator) -> None:
    for _, module in _router_modules(model):
        weight = _router_weight(module)
        std = DEEPSEEK_ROUTER_STD if family == "deepseek_v3" else ROUTER_STD
        weight.copy_((torch.randn(weight.shape, generator=generator, dtype=torch.float64) * std).to(weight.dtype))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):  # GPT-OSS router bias (Llama4Router is an nn.Linear with bias=None)
            bias.copy_((torch.randn(bias.shape, generator=generator, dtype=torch.float64) * std).to(bias.dtype))
        if family == "deepseek_v3":
            ebias = module.e_score_correction_bias
            noise = torch.randn(ebias.shape, generator=generator, dtype=torch.float64) * DEEPSEEK_BIAS_STD
            ebias.copy_(noise.to(ebias.dtype))


def _check_finite(model, family: str) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"{family}: {name} has non-finite values after init")


def tiny_model(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> PreTrainedModel:
    """A tiny seeded `PreTrainedModel` for `family`, in eval() mode on CPU, in `dtype`.

    The same `family`, `seed` and `overrides` give bit-identical weights; the global RNG is left untouched.
    """
    import transformers

    _check_family(family)
    config = tiny_config(family, **overrides)
    model_cls = getattr(transformers, _CONFIGS[family][1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)  # built (and initialised) in float32, cast below
        generator = torch.Generator().manual_seed(seed + 0x5EED)
        _make_routing_nondegenerate(model, family, generator)
    model = model.to(device="cpu", dtype=dtype)
    model.eval()
    _check_finite(model, family)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.bos_token_id = BOS_TOKEN_ID
    model.generation_config.eos_token_id = EOS_TOKEN_ID
    return model


def save_tiny_model(family: str, path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Save `tiny_model(family, ...)` and the byte-level tokenizer into `path` (created if needed); return it."""
    from moetrace.models.tokenizer import byte_level_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_model(family, seed=seed, dtype=dtype, **overrides)
    model.save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path

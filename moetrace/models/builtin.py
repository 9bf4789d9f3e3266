"""The built-in model used when no `--model` is given.

Until the trained demo model exists this is a stand-in: a tiny Mixtral-shaped model with seeded
random weights and a byte-level tokenizer, built in memory in well under a second.
"""

from __future__ import annotations

import torch

from moetrace.models.loading import STAND_IN_NAME, LoadedModel
from moetrace.models.tokenizer import byte_level_tokenizer


def stand_in_config():  # type: ignore[no-untyped-def]
    from transformers import MixtralConfig

    tokenizer_size = 259
    return MixtralConfig(
        vocab_size=tokenizer_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def builtin_model(seed: int = 0) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(stand_in_config())
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return LoadedModel(model=model, tokenizer=byte_level_tokenizer(), name=STAND_IN_NAME)

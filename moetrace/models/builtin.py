"""A built-in random-weight stand-in model for tests (the trained demo model: `moetrace.models.loading.load_demo_model`)."""

from __future__ import annotations

from typing import Any

import torch

from moetrace.models.loading import LoadedModel
from moetrace.models.tokenizer import byte_level_tokenizer

STAND_IN_NAME = "moetrace/stand-in-tiny-mixtral (random weights, seed 0)"


def stand_in_config() -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=259,  # the byte-level tokenizer
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


def stand_in_model(seed: int = 0) -> LoadedModel:
    """A tiny Mixtral-shaped model with seeded random weights and a byte tokenizer, built in memory."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(stand_in_config())
    model.eval()
    return LoadedModel(model=model, tokenizer=byte_level_tokenizer(), name=STAND_IN_NAME)

"""Generation bookkeeping shared by `record` and `run` (and the offloader): prompts to token ids,
the pad and end-of-sequence ids, left padding, greedy generation, and which tokens count.

Which tokens count, for recording and offloading alike: a position counts when it is not padding
(its attention-mask entry is 1) and its row has not finished. A row finishes at the first
end-of-sequence token it generates after its prefill; that token and every later one of the row do
not count (the model still computes them in a batch, but their outputs are discarded). An
end-of-sequence token inside a prompt does not finish its row. `FinishedRows` applies the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moetrace.errors import PromptsError, RecordingError


def encode_prompts(tokenizer: Any, prompts: list[Any]) -> list[list[int]]:
    """Token ids of each prompt: text through `tokenizer`, token-id lists as they are."""
    if all(isinstance(p, (list, tuple)) for p in prompts):
        encoded = [[int(t) for t in p] for p in prompts]
    elif tokenizer is None:
        raise PromptsError("text prompts need a tokenizer: pass tokenizer= with a loaded model, or token ids")
    else:
        encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise PromptsError(f"prompt {empty[0]} tokenizes to no tokens")
    return encoded


def pad_token_id(model: Any, tokenizer: Any) -> int:
    """The tokenizer's pad id, else the model's generation config's, else end of sequence, else 0."""
    generation = getattr(model, "generation_config", None)
    candidates = (
        getattr(tokenizer, "pad_token_id", None),
        getattr(generation, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )
    for value in candidates:
        if isinstance(value, int):
            return value
    return 0


def end_of_sequence_ids(model: Any, tokenizer: Any = None) -> list[int]:
    """The end-of-sequence ids of the model's generation config, else the tokenizer's; [] when neither has one."""
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def left_pad(batch: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a batch, each row left-padded with `pad_id` to the longest."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    pad_id: int,
    eos_ids: list[int],
) -> torch.Tensor:
    """Greedy generation as `record` and `run` do it; returns prompt and generated ids (the prompt alone for 0)."""
    if max_new_tokens == 0:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return input_ids
    from transformers import GenerationConfig

    generation = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_ids or None
    )
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation)


def until_end(generated: list[int], eos_ids: Iterable[int]) -> list[int]:
    """A row's generated ids up to and with its first end-of-sequence token: the tokens that count."""
    ends = set(eos_ids)
    for i, token in enumerate(generated):
        if token in ends:
            return generated[: i + 1]
    return generated


@dataclass
class Forward:
    """What a model's forward pass is about to compute, read from its arguments (tensors on the device)."""

    batch: int
    length: int
    prefill: bool
    """No cached positions before this forward: it starts its rows."""
    pos: torch.Tensor
    """(batch, length) each token's position in its sequence, padding not counted."""
    valid: torch.Tensor
    """(batch, length) not padding."""
    tokens: torch.Tensor | None
    """(batch, length) input ids, None when the forward got embeddings."""


def describe_forward(args: tuple, kwargs: dict) -> Forward:
    """Read a forward's shape, positions and padding from the arguments its pre-hook sees."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    if input_ids is None and embeds is None:
        raise RecordingError("a traced forward pass got neither input_ids nor inputs_embeds")
    reference: Any = input_ids if input_ids is not None else embeds
    batch, length = int(reference.shape[0]), int(reference.shape[1])
    mask = kwargs.get("attention_mask")
    device = reference.device
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        past = int(mask.shape[1]) - length
        mask = mask.to(torch.int32)
        pos = (mask.cumsum(dim=1) - 1)[:, past:]
        valid = mask[:, past:] > 0
    else:
        past = _past_length(kwargs)
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, torch.Tensor):
            pos = position_ids.expand(batch, length)
        else:
            pos = (torch.arange(length, device=device) + past).expand(batch, length)
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    return Forward(batch, length, past == 0, pos, valid, input_ids)


def _past_length(kwargs: dict) -> int:
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return 0


class FinishedRows:
    """Which rows of the batch in flight have finished, carried from forward to forward (see the module
    docstring for the rule). A prefill, or a forward of another batch size, starts fresh rows."""

    def __init__(self, eos_ids: Iterable[int] = ()) -> None:
        self.eos_ids = np.array(sorted(set(eos_ids)), np.int64)
        self.rows = np.zeros(0, bool)

    def update(self, forward: Forward, tokens: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """(batch, length) bool, True at the positions that do not count because their row has finished.
        `tokens`: the forward's input ids (host or device; copied to the host only when they can end a row),
        `forward.tokens` when None."""
        batch, length = forward.batch, forward.length
        if forward.prefill or len(self.rows) != batch:
            self.rows = np.zeros(batch, bool)
            return np.zeros((batch, length), bool)
        if tokens is None:
            tokens = forward.tokens
        if tokens is None or not len(self.eos_ids):
            return np.repeat(self.rows[:, None], length, axis=1)
        ids = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        is_eos = np.isin(ids.reshape(batch, length), self.eos_ids)
        finished = self.rows[:, None] | (np.cumsum(is_eos, axis=1) > 0)
        self.rows = finished[:, -1].copy()
        return finished

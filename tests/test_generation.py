"""The generation bookkeeping that `record`, `run` and the offloader share: which tokens count."""

from __future__ import annotations

import numpy as np
import torch

from moetrace.models.generation import FinishedRows, describe_forward, left_pad, until_end

EOS = 2


def _forward(tokens: list[list[int]], mask: list[list[int]] | None = None, past: int = 0):  # type: ignore[no-untyped-def]
    ids = torch.tensor(tokens)
    if mask is None:
        mask = [[1] * (past + ids.shape[1])] * ids.shape[0]
    return describe_forward((), {"input_ids": ids, "attention_mask": torch.tensor(mask)})


def test_left_padding_is_not_valid_and_positions_skip_it() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], 0, torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    forward = describe_forward((), {"input_ids": ids, "attention_mask": mask})
    assert forward.prefill and forward.valid.tolist() == [[True] * 3, [False, False, True]]
    assert forward.pos[1, 2].item() == 0


def test_a_generated_end_of_sequence_finishes_its_row_from_that_token_on() -> None:
    rows = FinishedRows([EOS])
    prompt = _forward([[5, EOS, 6], [7, 8, 9]])  # an end-of-sequence token inside a prompt ends nothing
    assert not rows.update(prompt).any()
    step = _forward([[EOS], [4]], mask=[[1] * 4, [1] * 4])
    assert not step.prefill
    assert rows.update(step).tolist() == [[True], [False]]  # the end-of-sequence token itself does not count
    step = _forward([[3], [EOS]], mask=[[1] * 5, [1] * 5])
    assert rows.update(step).tolist() == [[True], [True]]  # finished rows stay finished
    assert not rows.update(_forward([[1, 2]])).any()  # a prefill starts fresh rows


def test_without_end_of_sequence_ids_no_row_finishes() -> None:
    rows = FinishedRows(())
    rows.update(_forward([[5, 6]]))
    assert not rows.update(_forward([[EOS]], mask=[[1] * 3])).any()


def test_until_end_keeps_the_end_of_sequence_token() -> None:
    assert until_end([4, 5, EOS, 6, EOS], [EOS]) == [4, 5, EOS]
    assert until_end([4, 5], [EOS]) == [4, 5] and until_end([], [EOS]) == []
    assert np.array_equal(until_end([7, 9], [9, 7]), [7])

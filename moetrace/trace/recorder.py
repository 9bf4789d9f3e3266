"""Hooks that record the routing of a model's forward passes into a trace.

During a forward each MoE block's routing stays on the device; when the model's forward returns,
all layers' expert ids, gate weights, positions and token ids are packed into one int32 tensor and
cross to the host in a single copy. Only the tokens that count are kept there (not padding, not finished
sequences: the rule of `moetrace.models.generation`), and the rows go to the trace writer together
with the step's per-expert load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from moetrace.errors import RecordingError
from moetrace.models.adapters import MoEBlock, check_pregate, find_moe_blocks, text_config
from moetrace.models.generation import FinishedRows, Forward, describe_forward, end_of_sequence_ids
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.writer import DEFAULT_FLUSH_ROWS, DEFAULT_FLUSH_SECONDS, TraceWriter


def model_info(model: nn.Module, blocks: list[MoEBlock], name: str | None = None) -> ModelInfo:
    config = text_config(model)
    dtype = next(model.parameters()).dtype
    return ModelInfo(
        num_experts=blocks[0].num_experts,
        top_k=blocks[0].top_k,
        moe_layers=tuple(b.layer for b in blocks),
        name=name or getattr(config, "_name_or_path", None) or type(model).__name__,
        model_type=getattr(config, "model_type", None),
        num_hidden_layers=getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None),
        expert_bytes=blocks[0].expert_bytes,
        dtype=str(dtype).removeprefix("torch."),
    )


class Tracer:
    """Records every forward pass of `model` into `writer` while attached."""

    def __init__(
        self,
        model: nn.Module,
        writer: TraceWriter,
        blocks: list[MoEBlock],
        *,
        eos_token_ids: Iterable[int] = (),
        on_forward: Callable[[int], None] | None = None,
        optimizer_steps: bool = False,
        pregate: bool = False,
    ) -> None:
        self.model = model
        self.optimizer_steps = optimizer_steps
        self.pregate = pregate
        if pregate:
            check_pregate(blocks)
        self.writer = writer
        self.blocks = blocks
        self.layers = np.array([b.layer for b in blocks], np.int16)
        self.num_experts = blocks[0].num_experts
        self.top_k = blocks[0].top_k
        self._finished = FinishedRows(eos_token_ids)
        self.on_forward = on_forward
        self.step = 0
        self.tokens_recorded = 0
        self._block_index = {id(b.module): i for i, b in enumerate(blocks)}
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(blocks)
        self._forward: Forward | None = None
        self._next_seq_id = 0
        self._queued_seq_ids: np.ndarray | None = None
        self._row_seq_ids = np.zeros(0, np.int32)
        self._handles: list[Any] = []
        self._load_sum: torch.Tensor | None = None
        self._queue: list[_HostForward] = []
        self._queued_since = 0.0
        self._pregate_pending: list[torch.Tensor | None] = [None] * len(blocks)
        self.run_updates: dict[str, Any] = {}
        """Entries added to meta.json's `run` when the trace is closed."""

    # -- attaching ----------------------------------------------------------------------------

    def attach(self) -> Tracer:
        self._handles.append(self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._model_post_hook))
        for block in self.blocks:
            if block.hook == "pre":
                self._handles.append(block.module.register_forward_pre_hook(self._block_pre_hook, with_kwargs=True))
            else:
                self._handles.append(block.module.register_forward_hook(self._block_post_hook, with_kwargs=True))
        if self.pregate:
            for i, block in enumerate(self.blocks[:-1]):
                hook = self._pregate_hook(i, self.blocks[i + 1])
                self._handles.append(block.decoder_layer.register_forward_hook(hook))  # type: ignore[union-attr]
        return self

    def detach(self) -> None:
        """Remove the hooks and write what is still waiting on the host."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.flush()

    def begin_batch(self, seq_ids: Iterable[int]) -> None:
        """Name the sequences of the next prefill's batch rows (otherwise they are numbered on).

        A negative id leaves its row out of the routes. With `optimizer_steps`, routes are written
        only for forwards announced this way.
        """
        self._queued_seq_ids = np.asarray(list(seq_ids), np.int32)

    def end_step(self) -> None:
        """With `optimizer_steps`: write the load summed over this step's forwards, start the next step."""
        if self._load_sum is not None:
            counts = self._load_sum.cpu().numpy()  # one copy per optimizer step
            layer_pos, expert = np.nonzero(counts)
            self.writer.write_load(
                step=self.step,
                phase="train",
                layer=self.layers[layer_pos],
                expert=expert,
                tokens=counts[layer_pos, expert],
            )
            self._load_sum = None
        self.step += 1

    # -- hooks --------------------------------------------------------------------------------

    def _pregate_hook(self, i: int, following: MoEBlock) -> Callable[..., None]:
        """After block i's decoder layer: the next MoE block's router on that layer's output."""

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._forward is None:
                return
            hidden = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                normed = following.pre_norm(hidden)  # type: ignore[misc]
                self._pregate_pending[i] = following.select(normed.reshape(-1, normed.shape[-1]))  # type: ignore[misc]

        return hook

    def _model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = [None] * len(self.blocks)
        self._pregate_pending = [None] * len(self.blocks)
        self._forward = describe_forward(args, kwargs)

    def _block_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._capture(module, args, kwargs, None)

    def _block_post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self._capture(module, args, kwargs, output)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._forward is None:
            return
        i = self._block_index[id(module)]
        index, weights = self.blocks[i].capture(args, kwargs, output)
        self._pending[i] = (index.detach(), None if weights is None else weights.detach())

    def _model_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        forward, self._forward = self._forward, None
        if forward is not None:
            self._record(forward)

    # -- one forward pass ---------------------------------------------------------------------

    def _record(self, forward: Forward) -> None:
        fired = [i for i, p in enumerate(self._pending) if p is not None]
        pending = [p for p in self._pending if p is not None]
        self._pending = [None] * len(self.blocks)
        batch, length = forward.batch, forward.length
        tokens_in_forward = batch * length
        if not fired:
            self.step += 0 if self.optimizer_steps else 1
            return
        index = torch.stack([p[0].reshape(-1, p[0].shape[-1]) for p in pending])
        if index.shape[1] != tokens_in_forward or index.shape[2] != self.top_k:
            raise RecordingError(
                f"routing of shape {tuple(index.shape[1:])} does not match {batch}×{length} tokens with top_k "
                f"{self.top_k}; this model's MoE blocks need an adapter"
            )
        if self.optimizer_steps:
            self._add_load(index, forward.valid, fired)
            self.tokens_recorded += tokens_in_forward
            if self._queued_seq_ids is None:  # no routes asked for: nothing crosses to the host
                if self.on_forward is not None:
                    self.on_forward(tokens_in_forward)
                return
        has_weights = all(p[1] is not None for p in pending)
        pieces = [index.to(torch.int32).reshape(-1)]
        if has_weights:
            weights = torch.stack([p[1].reshape(-1, self.top_k) for p in pending])  # type: ignore[union-attr]
            pieces.append(weights.to(torch.float32).view(torch.int32).reshape(-1))
        if self.pregate:
            missing = torch.full_like(index[0], -1)
            chosen = [self._pregate_pending[i] for i in fired]
            pieces.append(
                torch.stack([missing if c is None else c.reshape(missing.shape) for c in chosen])
                .to(torch.int32)
                .reshape(-1)
            )
        pieces += [forward.pos.to(torch.int32).reshape(-1), forward.valid.to(torch.int32).reshape(-1)]
        if forward.tokens is not None:
            pieces.append(forward.tokens.to(torch.int32).reshape(-1))
        host = torch.cat([p.to(index.device) for p in pieces]).cpu().numpy()  # the one copy per forward

        layers = len(fired)
        routed = layers * tokens_in_forward * self.top_k
        experts = host[:routed].reshape(layers, tokens_in_forward, self.top_k)
        offset = routed
        gate = None
        if has_weights:
            gate = host[offset : offset + routed].view(np.float32).reshape(layers, tokens_in_forward, self.top_k)
            offset += routed
        pregate = None
        if self.pregate:
            pregate = host[offset : offset + routed].reshape(layers, tokens_in_forward, self.top_k)
            offset += routed
        pos = host[offset : offset + tokens_in_forward]
        valid = host[offset + tokens_in_forward : offset + 2 * tokens_in_forward].astype(bool)
        offset += 2 * tokens_in_forward
        tokens = host[offset : offset + tokens_in_forward] if forward.tokens is not None else None

        keep, seq_ids = self._keep_mask(forward, valid, tokens)
        phase = "train" if self.model.training else ("prefill" if forward.prefill else "decode")
        record = _HostForward(self.step, phase, tuple(fired), experts, gate, pos, tokens, keep, seq_ids, pregate)
        if self._queue and not self._queue[-1].joins(record):
            self.flush()
        if not self._queue:
            self._queued_since = time.monotonic()
        self._queue.append(record)
        if not self.optimizer_steps:
            self.step += 1
        waited = time.monotonic() - self._queued_since
        if len(self._queue) >= _QUEUE_FORWARDS or waited >= self.writer.flush_seconds / 3:
            self.flush()  # the writer then keeps at most flush_seconds more: a killed run loses ~flush_seconds

    def flush(self) -> None:
        """Turn the forwards waiting on the host into route and load rows (vectorised over all of them)."""
        group, self._queue = self._queue, []
        if not group:
            return
        first = group[0]
        n_fwd, layers = len(group), len(first.fired)
        keep = np.stack([r.keep for r in group])  # (N, T)
        f, t = np.nonzero(keep)
        kept = len(f)
        if kept:
            f_rows = np.repeat(f, layers)
            l_rows = np.tile(np.arange(layers), kept)
            t_rows = np.repeat(t, layers)
            experts = np.stack([r.experts for r in group])[f_rows, l_rows, t_rows]  # (rows, k)
            steps = np.array([r.step for r in group], np.int32)
            layer_ids = self.layers[list(first.fired)]
            self.writer.write_routes(
                seq_id=np.stack([r.seq_ids for r in group])[f_rows, t_rows],
                pos=np.stack([r.pos for r in group])[f_rows, t_rows],
                step=steps[f_rows],
                phase=first.phase,
                layer=layer_ids[l_rows],
                token_id=None if first.tokens is None else np.stack([r.tokens for r in group])[f_rows, t_rows],  # type: ignore[misc]
                experts=experts,
                weights=None if first.gate is None else np.stack([r.gate for r in group])[f_rows, l_rows, t_rows],  # type: ignore[misc]
                pregate_experts=None
                if first.pregate is None
                else np.stack([r.pregate for r in group])[f_rows, l_rows, t_rows],  # type: ignore[misc]
            )
            if not self.optimizer_steps:
                keys = ((f_rows * layers + l_rows)[:, None] * self.num_experts + experts).reshape(-1)
                counts = np.bincount(keys, minlength=n_fwd * layers * self.num_experts)
                cell = np.flatnonzero(counts)
                fwd_layer, expert = np.divmod(cell, self.num_experts)
                fwd, layer = np.divmod(fwd_layer, layers)
                self.writer.write_load(
                    step=steps[fwd], phase=first.phase, layer=layer_ids[layer], expert=expert, tokens=counts[cell]
                )
        if not self.optimizer_steps:
            self.tokens_recorded += kept
        if self.on_forward is not None:
            self.on_forward(kept)

    def _add_load(self, index: torch.Tensor, valid: torch.Tensor, fired: list[int]) -> None:
        """Add this forward's per-expert counts to the step's sum, on the device."""
        layers = len(self.blocks)
        offsets = torch.tensor(fired, device=index.device).view(-1, 1, 1) * self.num_experts
        keys = (index + offsets)[:, valid.reshape(-1).to(index.device), :].reshape(-1)
        counts = torch.bincount(keys, minlength=layers * self.num_experts).view(layers, self.num_experts)
        self._load_sum = counts if self._load_sum is None else self._load_sum + counts

    def _keep_mask(
        self, forward: Forward, valid: np.ndarray, tokens: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The positions that count (not padding, not finished) of recorded rows, and each position's seq_id."""
        batch, length = forward.batch, forward.length
        if forward.prefill or len(self._row_seq_ids) != batch:
            queued, self._queued_seq_ids = self._queued_seq_ids, None
            if queued is not None and len(queued) == batch:
                self._row_seq_ids = queued
            else:
                self._row_seq_ids = np.arange(self._next_seq_id, self._next_seq_id + batch, dtype=np.int32)
            self._next_seq_id = max(self._next_seq_id, int(self._row_seq_ids.max()) + 1)
        finished = self._finished.update(forward, tokens)
        seq_ids = np.repeat(self._row_seq_ids, length)
        return valid & ~finished.reshape(-1) & (seq_ids >= 0), seq_ids  # a negative seq_id: row not recorded


_QUEUE_FORWARDS = 64


@dataclass
class _HostForward:
    """One forward's routing on the host, waiting to be written."""

    step: int
    phase: str
    fired: tuple[int, ...]
    experts: np.ndarray
    """(layers, tokens, k)"""
    gate: np.ndarray | None
    pos: np.ndarray
    tokens: np.ndarray | None
    keep: np.ndarray
    seq_ids: np.ndarray
    pregate: np.ndarray | None = None
    """(layers, tokens, k) the next MoE block's router on this layer's output; −1 where there is none."""

    def joins(self, other: _HostForward) -> bool:
        """Whether `other` can be written in one vectorised block with this forward."""
        return (
            self.phase == other.phase
            and self.fired == other.fired
            and self.experts.shape == other.experts.shape
            and (self.gate is None) == (other.gate is None)
            and (self.tokens is None) == (other.tokens is None)
        )


@contextlib.contextmanager
def tracing(
    model: nn.Module,
    out_dir: str | Path,
    *,
    force: bool = False,
    name: str | None = None,
    run: dict[str, Any] | None = None,
    eos_token_ids: Iterable[int] | None = None,
    flush_rows: int = DEFAULT_FLUSH_ROWS,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    on_forward: Callable[[int], None] | None = None,
    optimizer_steps: bool = False,
    pregate: bool = False,
) -> Iterator[Tracer]:
    """Trace whatever forward passes run inside the block on an already loaded model.

        with moetrace.tracing(model, "traces/mine") as tracer:
            model.generate(**inputs, max_new_tokens=32)
        trace = moetrace.open_trace("traces/mine")

    Each prefill (a forward without a cache) starts new sequences, numbered from 0 unless
    `tracer.begin_batch(seq_ids)` names them. With `pregate`, each row also stores the next MoE
    layer's router applied to this layer's output (`pregate_experts`). With `optimizer_steps`, load is summed over forwards
    until `tracer.end_step()` (training). The trace is marked complete when the block exits
    normally; after an exception it stays readable and is marked incomplete.
    """
    blocks = find_moe_blocks(model)
    info = model_info(model, blocks, name)
    if eos_token_ids is None:
        eos_token_ids = end_of_sequence_ids(model)
    meta = TraceMeta.new(info, {"mode": "generate", **(run or {})})
    weights_type = pa.float16() if info.dtype in ("float16", "bfloat16") else pa.float32()
    if pregate:
        check_pregate(blocks)
    extra = ("pregate_experts",) if pregate else ()
    writer = TraceWriter(
        out_dir,
        meta,
        weights_type=weights_type,
        extra_columns=extra,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        force=force,
    )
    tracer = Tracer(
        model, writer, blocks, eos_token_ids=eos_token_ids, on_forward=on_forward, optimizer_steps=optimizer_steps,
        pregate=pregate,
    ).attach()  # fmt: skip
    started = time.perf_counter()
    try:
        yield tracer
    except BaseException:
        with contextlib.suppress(Exception):
            tracer.detach()
        writer.close(complete=False)
        raise
    tracer.detach()
    seconds = round(time.perf_counter() - started, 3)
    writer.close(
        complete=True, steps=tracer.step, routed_tokens=tracer.tokens_recorded, seconds=seconds, **tracer.run_updates
    )

"""Live expert offloading: a `transformers` experts implementation backed by host memory and a
policy-driven cache of device slots.

Every routed expert's weights sit in one contiguous (pinned) host buffer. Each layer (or one pool
for all layers) has a fixed number of device slots; a miss copies the expert into the slot the
policy frees, on a dedicated CUDA stream with an event per slot, so compute waits only for the
experts it needs. After a layer, the next layer's predicted experts are loaded ahead: pre-gating
(the next router on this layer's output) or a saved path predictor. Nothing is copied back on
eviction: weights are read-only. Padding and finished sequences are not computed (their outputs
are discarded anyway), so the cache sees exactly the need-sets of the run's own trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from moetrace.errors import InvalidArgumentError, NotAMoEModelError
from moetrace.models.adapters import check_pregate, find_moe_blocks
from moetrace.models.generation import FinishedRows, describe_forward
from moetrace.offload.cache import SlotCache
from moetrace.offload.store import DeviceSlots, HostExperts
from moetrace.sim.policies import parse_live_policy
from moetrace.sim.reference import check_capacity
from moetrace.sim.replay import CacheSpace

IMPLEMENTATION = "moetrace_offload"
ATTRIBUTE = "_moetrace_offload"
"""Set on each offloaded experts module: (its offloader, its block index). An attribute, not a global
registry, so that a model and its offloader are freed together."""


@dataclass(frozen=True)
class OffloadConfig:
    """What runs where; saved in the run's report."""

    policy: str = "lru"
    """An online policy (lru, fifo, lfu, ...), optionally + a prefetch source: pregate, or markov/mlp with a
    saved predictor."""
    capacity: int = 8
    """Device slots per layer, or in all with `pool`."""
    pool: bool = False
    """One pool of slots shared by all layers."""
    prefetch_budget: int | None = None
    """Experts prefetched per layer at most; None: top-k."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise InvalidArgumentError(f"--capacity must be at least 1, got {self.capacity}")
        if self.prefetch_budget is not None and self.prefetch_budget < 0:
            raise InvalidArgumentError(f"--prefetch-budget must be 0 or more, got {self.prefetch_budget}")
        self.parts()  # a policy a live cache cannot run is refused here

    def parts(self) -> tuple[str, str | None]:
        """(demand policy, prefetch source or None); one error line for a policy a live cache cannot run."""
        spec = parse_live_policy(self.policy)
        return spec.policy.name, spec.source


@dataclass
class OffloadStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    prefetch_loads: int = 0
    streamed: int = 0
    bytes: int = 0
    stall_s: float = 0.0
    decode_misses: int = 0
    decode_bytes: int = 0
    """Misses and bytes moved during decode steps (every forward after a prompt's prefill)."""
    per_layer: list[tuple[int, int]] = field(default_factory=list)
    """(hits, misses) of every request, in order: the live access stream."""


def _offloaded_experts(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    offloader, block = getattr(self, ATTRIBUTE)
    return offloader.forward(block, self, hidden_states, top_k_index, top_k_weights)


class Offloader:
    """Attach to a model on the CPU; it moves everything but the routed experts to `device`."""

    def __init__(self, model: nn.Module, config: OffloadConfig, device: torch.device, *, eos_token_ids: tuple[int, ...] = (),
                 predictor: Any = None) -> None:  # fmt: skip
        from transformers.integrations.moe import ExpertsInterface

        self.model, self.config, self.device = model, config, device
        self.blocks = find_moe_blocks(model)
        for block in self.blocks:
            if block.hook != "pre" or not hasattr(block.module, "_is_expert_parallel"):
                raise NotAMoEModelError(
                    f"offloading needs experts on transformers' experts interface; {type(block.module).__name__} is not"
                )
        spec = parse_live_policy(config.policy)
        base, self.source, self.needs_predictor = spec.policy.name, spec.source, spec.needs_predictor
        self.num_experts, self.top_k = self.blocks[0].num_experts, self.blocks[0].top_k
        layers = len(self.blocks)
        self.space = CacheSpace(layers, self.num_experts, config.pool)
        check_capacity(config.capacity, self.top_k, self.space.ids)
        self.cuda = device.type == "cuda"
        self.hosts = [HostExperts(b.module, self.num_experts, pin=self.cuda) for b in self.blocks]
        if config.pool and len({(h.layout.numel, h.layout.dtype) for h in self.hosts}) != 1:
            raise InvalidArgumentError("--pool needs every layer's experts to be the same size")
        self.slots = (
            [DeviceSlots(self.hosts[0].layout, config.capacity, device)]
            if config.pool else [DeviceSlots(h.layout, config.capacity, device) for h in self.hosts]
        )  # fmt: skip
        self.cache = SlotCache(base, config.capacity, self.space.caches, self.space.ids)
        self.predictor = predictor
        if self.needs_predictor and predictor is None:
            raise InvalidArgumentError(
                f"{config.policy} needs --predictor (a path predictor saved by `moetrace predict path --save`)"
            )
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.stats = OffloadStats()
        self._keep: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._finished = FinishedRows(eos_token_ids)
        self._decoding = False
        self._last_need: frozenset[int] = frozenset()
        self._routing: dict[int, np.ndarray] = {}
        self._stalls: list[tuple[Any, Any]] = []
        self._handles: list[Any] = []
        ExpertsInterface.register(IMPLEMENTATION, _offloaded_experts)
        for i, block in enumerate(self.blocks):
            setattr(block.module, ATTRIBUTE, (self, i))
            for name, _, _, _ in self.hosts[i].layout.parts:  # drop the originals: the host buffers hold them now
                setattr(block.module, name, nn.Parameter(torch.empty(0), requires_grad=False))
        model.set_experts_implementation(IMPLEMENTATION)  # type: ignore[operator]
        model.to(device)
        for i, block in enumerate(self.blocks):  # the experts' parameters are views of their host buffers
            for name, view in self.hosts[i].views().items():
                setattr(block.module, name, nn.Parameter(view, requires_grad=False))
        self.blocks = find_moe_blocks(model)  # fresh: the old blocks still held the original tensors
        self._handles.append(model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        if self.source == "pregate":
            check_pregate(self.blocks)
            for i, block in enumerate(self.blocks[:-1]):
                self._handles.append(block.decoder_layer.register_forward_hook(self._pregate_hook(i)))  # type: ignore[union-attr]

    # -- which tokens are computed -------------------------------------------------------------

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        forward = describe_forward(args, kwargs)
        self._routing = {}
        self._decoding = not forward.prefill
        keep = forward.valid.reshape(forward.batch, forward.length)
        tokens = forward.tokens
        finished = self._finished.update(forward)  # the tokens that count are the ones computed
        if finished.any():
            keep = keep & ~torch.as_tensor(finished, device=keep.device)
        self._keep = keep.reshape(-1)
        self._tokens = tokens.reshape(-1) if tokens is not None else None

    # -- one MoE block -------------------------------------------------------------------------

    def forward(
        self, i: int, module: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        index = top_k_index.reshape(flat.shape[0], -1)
        gate = weights.reshape(flat.shape[0], -1)
        keep = (
            self._keep
            if self._keep is not None and len(self._keep) == flat.shape[0]
            else torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        )
        rows = keep.nonzero().squeeze(1)
        out = torch.zeros_like(flat)
        if len(rows) == 0:
            return out.reshape(hidden.shape)
        routed = index[rows].cpu().numpy()  # the one host copy per layer: the need-set decides the copies
        self._routing[i] = routed
        needed = np.unique(routed).tolist()
        cache, offset = self._cache_space(i)
        self._last_need = frozenset(offset + e for e in needed)
        placement = self.cache.request(cache, sorted(self._last_need))
        self.stats.hits += placement.hits
        self.stats.misses += placement.misses
        if self._decoding:
            self.stats.decode_misses += placement.misses
        self.stats.per_layer.append((placement.hits, placement.misses))
        slots = self.slots[cache]
        self._copy(i, slots, [(e - offset, s) for e, s in placement.loads])
        streamed = {e - offset: self._stream(i, e - offset) for e in placement.streamed}
        stall_started = self._mark()
        for e in needed:
            slot = self.cache.slot_of[cache].get(offset + e)
            ready = slots.ready[slot] if slot is not None and self.cuda else None
            if ready is not None:
                torch.cuda.current_stream(self.device).wait_event(ready)
        self._stall(stall_started)
        for e in needed:  # ascending expert ids: the eager implementation's order, so the sums match it
            slot = self.cache.slot_of[cache].get(offset + e)
            params = slots.weights(slot) if slot is not None else streamed[e]
            token_idx, position = torch.where(index[rows] == e)
            token_idx = rows[token_idx]
            contribution = _expert(module, params, flat[token_idx]) * gate[token_idx, position, None]
            # one addition per row, as eager's index_add_ does (index_add_ stalls on a busy CPU thread pool)
            out.index_put_((token_idx,), contribution.to(out.dtype), accumulate=True)
        if self.cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            for e in needed:
                slot = self.cache.slot_of[cache].get(offset + e)
                if slot is not None:
                    slots.released[slot] = done
        if self.needs_predictor and i + 1 < len(self.blocks):
            self._prefetch(i + 1, self._predicted(i, rows))
        return out.reshape(hidden.shape)

    def _cache_space(self, block: int) -> tuple[int, int]:
        """(cache, offset of this block's expert ids in it), numbered as `simulate` numbers them."""
        return int(self.space.cache(block)), int(self.space.offset(block))

    def _copy(self, block: int, slots: DeviceSlots, loads: list[tuple[int, int]]) -> None:
        host = self.hosts[block].buffer
        for expert, slot in loads:
            if self.cuda:
                with torch.cuda.stream(self.copy_stream):
                    released = slots.released[slot]
                    if released is not None:
                        self.copy_stream.wait_event(released)  # type: ignore[union-attr]
                    slots.buffer[slot].copy_(host[expert], non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record(self.copy_stream)
                    slots.ready[slot] = ready
            else:
                started = time.perf_counter()
                slots.buffer[slot].copy_(host[expert])
                self.stats.stall_s += time.perf_counter() - started
            self._moved(self.hosts[block].layout.nbytes)

    def _stream(self, block: int, expert: int) -> dict[str, torch.Tensor]:
        """An expert that found no free slot: copied into a buffer of its own for this request only."""
        layout = self.hosts[block].layout
        scratch = DeviceSlots(layout, 1, self.device)
        scratch.buffer[0].copy_(self.hosts[block].buffer[expert])
        self.stats.streamed += 1
        self._moved(layout.nbytes)
        return scratch.weights(0)

    def _moved(self, nbytes: int) -> None:
        self.stats.loads += 1
        self.stats.bytes += nbytes
        if self._decoding:
            self.stats.decode_bytes += nbytes

    # -- prefetching -----------------------------------------------------------------------------

    def _pregate_hook(self, i: int) -> Any:
        following = self.blocks[i + 1]

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            flat = hidden.reshape(-1, hidden.shape[-1])
            keep = self._keep if self._keep is not None and len(self._keep) == flat.shape[0] else None
            if keep is not None:
                flat = flat[keep]
            if len(flat) == 0:
                return
            with torch.no_grad():
                chosen = following.select(following.pre_norm(flat)).cpu().numpy()  # type: ignore[misc]
            scores = np.zeros(self.num_experts)
            np.add.at(
                scores, chosen, np.broadcast_to(np.arange(chosen.shape[1], 0, -1, dtype=np.float64), chosen.shape)
            )
            self._prefetch(i + 1, scores)

        return hook

    def _predicted(self, i: int, rows: torch.Tensor) -> np.ndarray:
        from moetrace.predict.paths.data import PathData

        n = len(rows)
        experts = np.full((n, len(self.blocks), self.top_k), 0, np.int64)
        for layer, routed in self._routing.items():
            experts[:, layer] = routed
        tokens = self._tokens[rows].cpu().numpy() if self._tokens is not None else None
        data = PathData(experts=experts, seq_id=np.zeros(n, np.int64), pos=np.zeros(n, np.int64), step=np.zeros(n, np.int64),
                        token_id=tokens, pregate=None, layers=tuple(b.layer for b in self.blocks),
                        num_experts=self.num_experts)  # fmt: skip
        return np.clip(self.predictor.scores(data, i, 1), 0, None).sum(axis=0)

    def _prefetch(self, target: int, scores: np.ndarray) -> None:
        chosen = np.flatnonzero(scores > 0)
        chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
        if self.config.prefetch_budget is not None:
            chosen = chosen[: self.config.prefetch_budget]
        cache, offset = self._cache_space(target)
        guard = self._last_need if self.config.pool else frozenset()  # one pool: the layer just served stays
        loads = self.cache.prefetch(cache, [offset + int(e) for e in chosen], guard)
        self.stats.prefetch_loads += len(loads)
        self._copy(target, self.slots[cache], [(e - offset, s) for e, s in loads])

    # -- timing ------------------------------------------------------------------------------------

    def _mark(self) -> Any:
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _stall(self, started: Any) -> None:
        if started is not None:
            after = torch.cuda.Event(enable_timing=True)
            after.record(torch.cuda.current_stream(self.device))
            self._stalls.append((started, after))

    def finish(self) -> OffloadStats:
        """Collect the GPU-side stall times (after a synchronise) and check the slot bookkeeping."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.stats.stall_s += sum(a.elapsed_time(b) for a, b in self._stalls) / 1e3
            self._stalls.clear()
        self.cache.check()
        return self.stats

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _expert(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One expert's output, computed as transformers' eager experts do."""
    transposed = getattr(module, "is_transposed", False)
    has_gate = getattr(module, "has_gate", True)
    up = params["gate_up_proj"] if has_gate else params["up_proj"]
    projected = x @ up if transposed else nn.functional.linear(x, up)
    if getattr(module, "has_bias", False):
        projected = projected + params["gate_up_proj_bias" if has_gate else "up_proj_bias"]
    hidden = module._apply_gate(projected) if has_gate else module.act_fn(projected)  # type: ignore[operator]
    down = params["down_proj"]
    result = hidden @ down if transposed else nn.functional.linear(hidden, down)
    if getattr(module, "has_bias", False):
        result = result + params["down_proj_bias"]
    return result

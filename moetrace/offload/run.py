"""`moetrace run`: greedy generation, plain or with experts offloaded, and what it cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from moetrace.errors import InvalidArgumentError, PromptsError

#: progress(sequences_done, sequences_total, tokens_in_this_forward)
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class RunConfig:
    """How `run` generates; kept in its report (and in the trace's meta.json with `record`)."""

    max_new_tokens: int = 32
    """Tokens generated per prompt, greedily."""
    batch_size: int = 1
    """Prompts per batch, left-padded to the longest."""
    device: str = "auto"
    """cpu, cuda (or cuda:N) or auto."""
    dtype: str = "auto"
    """auto (float32 on the CPU, the checkpoint's dtype on a GPU), float32, bfloat16, float16 or float64."""
    seed: int = 0
    """Seed for torch before each run."""
    offload: bool = False
    """Keep routed experts in host memory behind a cache of device slots."""
    policy: str = "lru"
    """The live cache's policy: an online policy, optionally + a prefetch source (pregate, markov, mlp)."""
    capacity: int | None = None
    """Device slots per layer (or in all with `pool`); from `gpu_memory` when None."""
    gpu_memory: float | None = None
    """Bytes of device memory for experts (instead of `capacity`)."""
    pool: bool = False
    """One pool of slots shared by all layers."""
    prefetch_budget: int | None = None
    """Experts prefetched per layer at most; None: top-k."""
    compare: bool = False
    """Also run the model with every expert on the device, and check the outputs agree."""

    def __post_init__(self) -> None:
        from moetrace.models.loading import resolve_device, resolve_dtype

        if self.max_new_tokens < 1:
            raise InvalidArgumentError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size must be at least 1, got {self.batch_size}")
        resolve_device(self.device)  # a bad --device or --dtype is refused before any model is loaded or built
        resolve_dtype(self.dtype, torch.device("cpu"))
        if self.offload and self.capacity is None and self.gpu_memory is None:
            raise InvalidArgumentError("--offload needs --capacity or --gpu-memory")
        if self.capacity is not None and self.capacity < 1:
            raise InvalidArgumentError(f"--capacity must be at least 1, got {self.capacity}")
        if self.gpu_memory is not None and self.gpu_memory <= 0:
            raise InvalidArgumentError("--gpu-memory must be positive")
        if self.prefetch_budget is not None and self.prefetch_budget < 0:
            raise InvalidArgumentError(f"--prefetch-budget must be 0 or more, got {self.prefetch_budget}")
        if self.offload:  # an unknown policy is refused before any model is loaded
            from moetrace.offload.runtime import OffloadConfig

            OffloadConfig(policy=self.policy, capacity=self.capacity or 8)


@dataclass
class RunReport:
    device: str
    config: dict[str, Any]
    generated: list[list[int]]
    prefill_tokens: int
    """Prompt tokens (padding excluded), all computed by the prefill forwards."""
    decode_tokens: int
    """Tokens computed by the decode forwards: every generated token but each row's first (which the
    prefill forward produces), up to and with the row's end-of-sequence token; rows that have finished
    are not counted."""
    prefill_s: float
    decode_s: float
    """Time of the decode forwards (every forward after a batch's prefill)."""
    peak_memory_bytes: int | None
    capacity: int | None = None
    hits: int = 0
    misses: int = 0
    loads: int = 0
    prefetch_loads: int = 0
    bytes: int = 0
    stall_s: float = 0.0
    decode_misses: int = 0
    decode_bytes: int = 0
    useful_prefetches: int = 0
    """Prefetched experts that were used before being evicted."""
    wasted_prefetches: int = 0
    """Prefetched experts never used: evicted unused, or still unused at the end."""
    streamed: int = 0
    """Misses that found no slot (every resident was needed by the same request): copied for that
    request only, not kept."""
    trace: str | None = None
    baseline: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Prefill and decode tokens (each token computed once) per second of forward time."""
        seconds = self.prefill_s + self.decode_s
        return (self.prefill_tokens + self.decode_tokens) / seconds if seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode tokens per second of decode time."""
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            tokens_per_s=self.tokens_per_s,
            prefill_tokens_per_s=self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0,
            decode_tokens_per_s=self.decode_tokens_per_s,
            hit_rate=self.hit_rate,
        )
        return data


class _Clock:
    """Times the first forward of each generate call (prefill) apart from the rest (decode)."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.device, self.prefill_s, self.decode_s, self.started, self.first = device, 0.0, 0.0, 0.0, True
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, *_: Any) -> None:
        self._sync()
        self.started = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        elapsed = time.perf_counter() - self.started
        if self.first:
            self.prefill_s += elapsed
            self.first = False
        else:
            self.decode_s += elapsed

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_model(
    model: str | None = None,
    prompts: str | Path | Sequence[str] | Sequence[Sequence[int]] | None = None,
    *,
    config: RunConfig | None = None,
    record: str | Path | None = None,
    predictor: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> RunReport:
    """Generate greedily from `prompts`; with `offload`, routed experts live in host memory behind a
    device cache of `capacity` slots driven by `policy`. Returns what was generated and what it cost.
    `config` is a `RunConfig`; or give its fields as keyword `options`."""
    from moetrace.models.generation import encode_prompts, end_of_sequence_ids, pad_token_id
    from moetrace.models.loading import load_model, resolve_device
    from moetrace.models.prompts import load_prompts
    from moetrace.trace.writer import check_output_dir

    if config is not None and options:
        raise TypeError(f"give a RunConfig or its fields, not both: {', '.join(options)}")
    config = config if config is not None else RunConfig(**options)
    if record is not None:
        check_output_dir(Path(record), force)
    prompt_list: list[Any] = list(prompts) if isinstance(prompts, (list, tuple)) else load_prompts(prompts)  # type: ignore[arg-type]
    if not prompt_list:
        raise PromptsError("no prompts given")
    device = resolve_device(config.device)
    if device.type == "cuda":  # models of earlier runs in this process are freed before memory is measured
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    loaded = load_model(model, device="cpu", dtype=config.dtype, dtype_for=device,
                        trust_remote_code=trust_remote_code)  # fmt: skip
    encoded = encode_prompts(loaded.tokenizer, prompt_list)
    pad_id, eos_ids = pad_token_id(loaded.model, loaded.tokenizer), end_of_sequence_ids(loaded.model, loaded.tokenizer)
    baseline = None
    if config.compare:
        reference = load_model(model, device="cpu", dtype=config.dtype, dtype_for=device,
                               trust_remote_code=trust_remote_code)  # fmt: skip
        reference.model.to(device)
        plain = _generate_all(reference.model, encoded, config, device, pad_id, eos_ids, None, None, progress)
        baseline = {"generated": plain.generated, "tokens_per_s": plain.tokens_per_s, "peak_memory_bytes": plain.peak_memory_bytes,
                    "prefill_s": plain.prefill_s, "decode_s": plain.decode_s}  # fmt: skip
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()
    offloader = None
    capacity = None
    if config.offload:
        offloader, capacity = _offload(loaded.model, config, device, eos_ids, predictor, record)
    else:
        loaded.model.to(device)
    report = _generate_all(
        loaded.model,
        encoded,
        config,
        device,
        pad_id,
        eos_ids,
        offloader,
        record,
        progress,
        name=loaded.name,
        force=force,
    )
    report.capacity = capacity
    if offloader is not None:
        stats = offloader.finish()
        offloader.detach()
        report.hits, report.misses, report.loads = stats.hits, stats.misses, stats.loads
        report.prefetch_loads, report.bytes, report.stall_s = stats.prefetch_loads, stats.bytes, stats.stall_s
        report.decode_misses, report.decode_bytes = stats.decode_misses, stats.decode_bytes
        report.useful_prefetches = offloader.cache.useful_prefetches
        report.wasted_prefetches = stats.prefetch_loads - report.useful_prefetches
        report.streamed = stats.streamed
    if baseline is not None:
        baseline["identical"] = baseline["generated"] == report.generated
        report.baseline = baseline
    if loaded.tokenizer is not None:
        report.text = [loaded.tokenizer.decode(ids, skip_special_tokens=True) for ids in report.generated]
    return report


def _offload(model: Any, config: RunConfig, device: torch.device, eos_ids: list[int], predictor: str | Path | None,
             record: str | Path | None) -> tuple[Any, int]:  # fmt: skip
    from moetrace.models.adapters import find_moe_blocks
    from moetrace.offload.runtime import OffloadConfig, Offloader

    blocks = find_moe_blocks(model)
    capacity = config.capacity
    if capacity is None:
        assert config.gpu_memory is not None
        total = _device_memory(device)
        if config.gpu_memory > total:
            raise InvalidArgumentError(
                f"--gpu-memory asks for {config.gpu_memory / 2**30:,.1f} GiB; the {device.type} device has "
                f"{total / 2**30:,.1f} GiB"
            )
        slots = int(config.gpu_memory // blocks[0].expert_bytes)
        experts = blocks[0].num_experts * (len(blocks) if config.pool else 1)
        capacity = min(slots if config.pool else slots // len(blocks), experts)  # more than enough: all resident
        if capacity < blocks[0].top_k:
            raise InvalidArgumentError(
                f"--gpu-memory {config.gpu_memory / 2**20:,.1f} MiB holds {capacity} experts "
                f"{'in all' if config.pool else 'per layer'} of {blocks[0].expert_bytes / 2**20:,.2f} MiB each; "
                f"top-k is {blocks[0].top_k}"
            )
    offload = OffloadConfig(
        policy=config.policy, capacity=capacity, pool=config.pool, prefetch_budget=config.prefetch_budget
    )
    loaded_predictor = None
    if predictor is not None:
        from moetrace.predict.path import check_predictor_shape, load_path_predictor

        loaded_predictor = load_path_predictor(predictor)
        check_predictor_shape(loaded_predictor, predictor, [b.layer for b in blocks], blocks[0].num_experts,
                              blocks[0].top_k, "this model")  # fmt: skip
        base, source = offload.parts()
        if source != loaded_predictor.name:
            raise InvalidArgumentError(
                f"--predictor holds a {loaded_predictor.name} predictor; use --policy {base}+{loaded_predictor.name}"
            )
        if loaded_predictor.lookaheads and 1 not in loaded_predictor.lookaheads:
            raise InvalidArgumentError(
                f"a live run prefetches one layer ahead; the predictor was trained for lookahead "
                f"{list(loaded_predictor.lookaheads)}"
            )
    return Offloader(model, offload, device, eos_token_ids=tuple(eos_ids), predictor=loaded_predictor), capacity


def _device_memory(device: torch.device) -> int:
    """Bytes of memory the device has: the GPU's, or the host's when slots are host tensors."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _generate_all(model: Any, encoded: list[list[int]], config: RunConfig, device: torch.device, pad_id: int, eos_ids: list[int],
                  offloader: Any, record: str | Path | None, progress: Progress | None, name: str | None = None,
                  force: bool = False) -> RunReport:  # fmt: skip
    import contextlib

    from moetrace.models.generation import generate, left_pad, until_end
    from moetrace.trace.recorder import tracing

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(config.seed)
    generated: list[list[int]] = []
    clock_prefill = clock_decode = 0.0
    prefill_tokens = decode_tokens = 0
    trace_ctx = (
        tracing(model, record, force=force, name=name, run={"mode": "generate", "offload": asdict(config)}, eos_token_ids=eos_ids,
                pregate=config.offload and config.policy.endswith("+pregate"))
        if record is not None else contextlib.nullcontext()
    )  # fmt: skip
    with trace_ctx as tracer, torch.inference_mode():
        for start in range(0, len(encoded), config.batch_size):
            batch = encoded[start : start + config.batch_size]
            input_ids, mask = left_pad(batch, pad_id, device)
            if tracer is not None:
                tracer.begin_batch(range(start, start + len(batch)))
            clock = _Clock(model, device)
            try:
                output = generate(model, input_ids, mask, config.max_new_tokens, pad_id, eos_ids)
            finally:
                clock.close()
            clock_prefill += clock.prefill_s
            clock_decode += clock.decode_s
            prefill_tokens += int(mask.sum())
            batch_tokens = int(mask.sum())
            for row in output[:, input_ids.shape[1] :].tolist():
                generated.append(until_end(row, eos_ids))  # up to and with its end-of-sequence token
                batch_tokens += len(generated[-1])
                decode_tokens += len(generated[-1]) - 1  # its first new token came out of the prefill forward
            if progress is not None:
                progress(start + len(batch), len(encoded), batch_tokens)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return RunReport(
        device=str(device), config=asdict(config), generated=generated, prefill_tokens=prefill_tokens,
        decode_tokens=decode_tokens, prefill_s=clock_prefill, decode_s=clock_decode, peak_memory_bytes=peak,
        trace=str(record) if record is not None else None,
    )  # fmt: skip

"""`moetrace simulate`: policies × capacities over a trace, with prefetching and the cost model."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.sim.chunks import ChunkedStream, StreamInfo
from moetrace.sim.engine import LruStacks
from moetrace.sim.policies import ALL, PolicySpec, parse_policy, registered
from moetrace.sim.reference import Counts, check_capacity
from moetrace.sim.replay import Replay, count_needs, prefetch_space, replay, warm_requests
from moetrace.sim.stream import ORDERS, Stream, build_stream, stream_chunks
from moetrace.trace.reader import Trace
from moetrace.trace.schema import PHASES

#: progress(jobs_done, jobs_total, description)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SimConfig:
    """What `simulate` replays; saved beside its results (`to_dict()["config"]`)."""

    policies: tuple[str, ...] = ("lru", "fifo", "lfu", "belady")
    """Policy names (`moetrace.sim.policies.policy_names()`), prefetching forms `policy+source`, or
    `all` (every policy the inputs allow)."""
    capacities: tuple[int, ...] = (8,)
    """Slots per layer, or in all when `pool`."""
    pool: bool = False
    """One cache shared by all layers instead of one per layer."""
    order: str = "step"
    """`step`: one need-set per (step, layer); `token`: token by token (decode at batch size 1)."""
    phase: str | None = None
    """Replay only this phase of the trace (prefill, decode, train); None: all."""
    bandwidth: float = 25e9
    """Host-to-device bytes per second."""
    layer_time: float = 0.0
    """Compute seconds of one MoE layer's forward (0: not modelled)."""
    expert_bytes: int | None = None
    """Bytes of one expert; meta.json's when None."""
    prefetch_depth: int = 1
    """Prefetch this many layers ahead."""
    prefetch_budget: int | None = None
    """At most this many experts prefetched per request (None: the source's own choice)."""
    warmup_share: float = 0.2
    """Policies that learn from a first share of the stream (`static`) learn from this share."""
    batch_size: int | None = None
    """Token scheduling: replay batches of this many sequences, arrival and grouped (token order)."""
    workers: int | None = None
    """Replays run in parallel on this many threads (None: one per core)."""

    def __post_init__(self) -> None:
        if not self.policies:
            raise InvalidArgumentError("--policy names no policy")
        if self.bandwidth <= 0:
            raise InvalidArgumentError(f"--bandwidth must be positive, got {self.bandwidth:g} bytes/s")
        if self.layer_time < 0:
            raise InvalidArgumentError(f"--layer-time must be 0 or more, got {self.layer_time:g} s")
        if not self.capacities or min(self.capacities) < 1:
            raise InvalidArgumentError(f"--capacity must be at least 1, got {list(self.capacities)}")
        if self.phase is not None and self.phase not in PHASES:
            raise InvalidArgumentError(f"--phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if self.order not in ORDERS:
            raise InvalidArgumentError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.expert_bytes is not None and self.expert_bytes < 1:
            raise InvalidArgumentError(f"--expert-bytes must be positive, got {self.expert_bytes}")
        if self.prefetch_depth < 1:
            raise InvalidArgumentError(f"--prefetch-depth must be at least 1, got {self.prefetch_depth}")
        if self.prefetch_budget is not None and self.prefetch_budget < 1:
            raise InvalidArgumentError(f"--prefetch-budget must be at least 1, got {self.prefetch_budget}")
        if not 0 < self.warmup_share < 1:
            raise InvalidArgumentError(f"the warm-up share must be in (0, 1), got {self.warmup_share}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.batch_size is not None and self.order != "token":
            raise InvalidArgumentError(
                f"--batch-size schedules tokens: it needs --order token, not --order {self.order}"
            )
        if self.workers is not None and self.workers < 1:
            raise InvalidArgumentError(f"--workers must be at least 1, got {self.workers}")
        for name in self.policies:
            if name != ALL:
                parse_policy(name)


def capacity_for_memory(trace: Trace, memory_bytes: float, pool: bool, expert_bytes: int | None = None) -> int:
    """How many experts `memory_bytes` of device memory hold: in one pool, or per layer."""
    size = expert_bytes or trace.meta.model.expert_bytes
    if not size:
        raise InvalidArgumentError("--gpu-memory needs the size of an expert: the trace has none, give --expert-bytes")
    slots = int(memory_bytes // size)
    return slots if pool else slots // len(trace.meta.model.moe_layers)


def expand_policies(names: tuple[str, ...], trace: Trace, predictor: str | None) -> list[PolicySpec]:
    """The policies to replay: `all` becomes every registered policy, `lru+oracle`, `lru+pregate` when
    the trace recorded pre-gating, and `lru+METHOD` for a given predictor; duplicates dropped."""
    chosen: list[str] = []
    for name in names:
        if name != ALL:
            chosen.append(name)
            continue
        chosen += [p.name for p in registered()] + ["lru+oracle"]
        if "pregate_experts" in trace.route_columns():
            chosen.append("lru+pregate")
        if predictor is not None:
            chosen.append(f"lru+{predictor}")
    return [parse_policy(name) for name in dict.fromkeys(chosen)]


@dataclass
class SimResult:
    config: SimConfig
    stream: StreamInfo
    expert_bytes: int | None
    results: list[dict[str, Any]] = field(default_factory=list)
    lru_curve: tuple[np.ndarray, np.ndarray] | None = None
    """(capacities, hit rates) of LRU at every capacity from the largest need-set up."""
    scheduling: list[dict[str, Any]] = field(default_factory=list)
    """{schedule, batch_size, forwards, experts_per_forward_layer, policy, capacity, hit_rate, loads} with --batch-size."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "results": self.results,
            "stream": {
                "order": self.stream.order,
                "requests": self.stream.requests,
                "accesses": self.stream.accesses,
                "tokens": self.stream.tokens,
                "layers": len(self.stream.layers),
                "experts": self.stream.num_experts,
                "top_k": self.stream.top_k,
            },  # fmt: skip
            "expert_bytes": self.expert_bytes,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()},
            "notes": self.notes,
        }
        if self.scheduling:
            out["scheduling"] = self.scheduling
        if self.lru_curve is not None:
            out["lru_curve"] = {"capacity": self.lru_curve[0].tolist(), "hit_rate": self.lru_curve[1].tolist()}
        return out


CHUNK_ROWS = 1_000_000
"""Route rows per chunk of a streamed replay: memory is about this many rows, whatever the trace."""


def simulate(
    trace: Trace,
    config: SimConfig,
    *,
    predictor: str | Path | None = None,
    progress: Progress | None = None,
    stream: Stream | None = None,
    executor: Any = None,
) -> SimResult:
    """Replay every policy at every capacity; report hits, loads, bytes and the cost model's times.

    The trace streams through in chunks (sorted out of core), so memory does not grow with it, except
    where a replay needs the whole stream at once: prefetching from a path predictor and token
    scheduling (`batch_size`). `stream` replays that stream instead of the trace's. `executor`
    (`moetrace.parallel`) runs each (policy, capacity) as its own job, replaying the trace there: on a
    Ray cluster, the trace must be on storage every node reads.
    """
    expert_bytes = config.expert_bytes or trace.meta.model.expert_bytes
    model = trace.meta.model
    ids_per_cache = len(model.moe_layers) * model.num_experts if config.pool else model.num_experts
    for capacity in config.capacities:
        check_capacity(capacity, model.top_k, ids_per_cache)
    loaded = None
    if predictor is not None:
        from moetrace.predict.path import load_path_predictor

        loaded = load_path_predictor(predictor, trace)
    specs = expand_policies(config.policies, trace, loaded.name if loaded is not None else None)
    for spec in specs:
        if spec.needs_predictor:
            if loaded is None:
                raise InvalidArgumentError(f"{spec.text} needs --predictor (saved by `moetrace predict path --save`)")
            if loaded.name != spec.source:
                raise InvalidArgumentError(
                    f"--predictor holds a {loaded.name} predictor; the policy asks for {spec.source}"
                )
    if executor is not None and stream is None:
        return _simulate_jobs(trace, config, specs, predictor, executor, progress)
    whole = stream is not None or config.batch_size is not None or any(s.source not in (None, "oracle") for s in specs)
    if whole:
        stream = stream or build_stream(trace, config.order, config.phase)
        pieces: Any = [stream]
    else:
        pieces = stream_chunks(trace, config.order, config.phase, rows=CHUNK_ROWS)
    future = any(spec.policy.knows == "future" for spec in specs)
    warming = threading.Thread(target=_warm_kernels, args=(specs,), daemon=True)
    warming.start()  # numba loads the kernels while DuckDB sorts the routes
    with ChunkedStream(pieces, config.pool, future=future, spill=not whole) as chunks:  # whole: in memory
        warming.join()
        result = SimResult(config=config, stream=chunks.info, expert_bytes=expert_bytes)
        if expert_bytes is None:
            result.notes.append(
                "the trace does not say how large an expert is (give --expert-bytes): bytes and times are 0"
            )
        _replay_all(chunks, specs, config, trace, loaded, expert_bytes, result, progress)
        if config.batch_size is not None and stream is not None:
            result.scheduling = schedule_rows(stream, config, _transfer_s(expert_bytes, config), specs)
    return result


def _transfer_s(expert_bytes: int | None, config: SimConfig) -> float:
    """Seconds to copy one expert to the device (0 when its size is unknown)."""
    return (expert_bytes or 0) / config.bandwidth


def _warm_kernels(specs: list[PolicySpec]) -> None:
    """Load every kernel the replay will call (numba's first call costs ~0.5 s per process)."""
    one = np.zeros(1, np.int64)
    for policy in {spec.policy.name: spec.policy for spec in specs}.values():
        warm = np.zeros((1, 2), np.int64) if policy.knows == "warmup" else None
        Replay(policy, 1, 1, 2, warm=warm, never=2).feed(one, np.array([0, 1]), one, upcoming=np.ones(1, np.int64))
    LruStacks(1, 2).feed(one, np.array([0, 1]), one)


def _replay_all(
    chunks: ChunkedStream,
    specs: list[PolicySpec],
    config: SimConfig,
    trace: Trace,
    loaded: Any,
    expert_bytes: int | None,
    result: SimResult,
    progress: Progress | None,
) -> None:
    """Every (policy, capacity) over the chunks: each chunk is read once and fed to every replay."""
    from moetrace.sim.prefetch import plan

    info = chunks.info
    transfer_s = _transfer_s(expert_bytes, config)
    warm = _warm_needs(chunks, config.warmup_share) if any(s.policy.knows == "warmup" for s in specs) else None
    jobs = [(spec, capacity) for spec in specs for capacity in config.capacities]
    replays = [
        Replay(spec.policy, capacity, chunks.space.caches, chunks.space.ids, warm=warm, transfer_s=transfer_s,
               layer_s=config.layer_time, never=info.requests + 1)
        for spec, capacity in jobs
    ]  # fmt: skip
    sources = sorted({spec.source for spec in specs if spec.source is not None})
    curve = _LruCurve(chunks) if any(spec.policy.name == "lru" for spec in specs) else None
    with ThreadPoolExecutor(max_workers=config.workers or os.cpu_count() or 1) as threads:
        for index, chunk in enumerate(chunks):
            plans = {
                source: prefetch_space(chunk.stream, plan(chunk.stream, source, depth=config.prefetch_depth,
                                       budget=config.prefetch_budget, trace=trace, predictor=loaded),
                                       chunk.cache_of, config.pool)
                for source in sources
            }  # fmt: skip

            def feed(i: int, chunk: Any = chunk, plans: Any = plans) -> None:
                if i == len(jobs):
                    curve.feed(chunk)  # type: ignore[union-attr]
                    return
                source = jobs[i][0].source
                replays[i].feed(chunk.cache_of, chunk.stream.offsets, chunk.ids, upcoming=chunk.upcoming,
                                prefetch=plans[source] if source else None)  # fmt: skip

            list(threads.map(feed, range(len(jobs) + (curve is not None))))
            if progress is not None:
                progress(
                    index + 1,
                    len(chunks),
                    f"{chunk.first_request + chunk.stream.requests:,} of {info.requests:,} requests",
                )
    if curve is not None:
        result.lru_curve = curve.rates()
    for (spec, capacity), run in zip(jobs, replays):
        row = _row(spec.text, capacity, run.counts(), info, expert_bytes or 0, transfer_s, config.layer_time)
        row["bound"] = spec.bound
        result.results.append(row)


def _simulate_jobs(
    trace: Trace, config: SimConfig, specs: list[PolicySpec], predictor: Any, executor: Any, progress: Progress | None
) -> SimResult:
    """Each (policy, capacity) replayed as its own job on `executor`; the rows in the local run's order."""
    from dataclasses import replace

    jobs = [
        (str(trace.path.resolve()), replace(config, policies=(spec.text,), capacities=(capacity,), workers=1),
         None if predictor is None else str(Path(predictor).resolve()))
        for spec in specs for capacity in config.capacities
    ]  # fmt: skip
    done = executor.map(_simulate_one, jobs, progress=progress)
    first: SimResult = done[0]
    result = SimResult(config=config, stream=first.stream, expert_bytes=first.expert_bytes, notes=first.notes)
    for one in done:
        result.results += one.results
    if any(spec.policy.name == "lru" for spec in specs):
        result.lru_curve = next(one.lru_curve for one in done if one.lru_curve is not None)
    if config.batch_size is not None:  # scheduling regroups the whole stream: here, not in a job
        stream = build_stream(trace, config.order, config.phase)
        result.scheduling = schedule_rows(stream, config, _transfer_s(first.expert_bytes, config), specs)
    return result


def _simulate_one(job: tuple[str, SimConfig, str | None]) -> SimResult:
    """One job of a sweep: open the trace where it runs and replay one policy at one capacity."""
    from moetrace.trace.reader import open_trace

    path, config, predictor = job
    return simulate(open_trace(path), config, predictor=predictor)


def _warm_needs(chunks: ChunkedStream, share: float) -> np.ndarray:
    """(caches, ids): needs of each expert in the first `share` of the requests."""
    cut = warm_requests(share, chunks.info.requests)
    warm = np.zeros((chunks.space.caches, chunks.space.ids), np.int64)
    for chunk in chunks:
        take = min(cut - chunk.first_request, chunk.stream.requests)
        if take <= 0:
            break
        count_needs(chunk.cache_of, chunk.stream.offsets, chunk.ids, take, warm)
    return warm


class _LruCurve:
    """LRU's hit rate at every capacity from the largest need-set to all ids, counted chunk by chunk."""

    def __init__(self, chunks: ChunkedStream) -> None:
        self.info = chunks.info
        self.ids = chunks.space.ids
        self.stacks = LruStacks(chunks.space.caches, self.ids)

    def feed(self, chunk: Any) -> None:
        self.stacks.feed(chunk.cache_of, chunk.stream.offsets, chunk.ids)

    def rates(self) -> tuple[np.ndarray, np.ndarray]:
        capacities = np.arange(max(self.info.largest, self.info.top_k), self.ids + 1)
        hits_below = np.concatenate([[0], np.cumsum(self.stacks.counts[: self.ids])])  # accesses with position < C
        return capacities, hits_below[capacities] / max(self.info.accesses, 1)


def lru_curve(stream: Stream, pool: bool = False, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LRU hit rate at every capacity from the largest need-set (`start`) to all experts, in one pass."""
    with ChunkedStream([stream], pool, future=False, spill=False) as chunks:
        curve = _LruCurve(chunks)
        for chunk in chunks:
            curve.feed(chunk)
        capacities, rates = curve.rates()
        keep = capacities >= (start or 0)
        return capacities[keep], rates[keep]


def schedule_rows(
    stream: Stream, config: SimConfig, transfer_s: float, specs: list[PolicySpec]
) -> list[dict[str, Any]]:
    """Experts activated per forward and layer, and each demand policy's hit rate, per schedule."""
    from moetrace.sim.schedule import SCHEDULES, scheduled_stream

    rows = []
    for schedule in SCHEDULES:
        batches = scheduled_stream(stream, config.batch_size or 1, schedule)
        per_request = float(batches.sizes().mean())
        for spec in specs:
            if spec.source is not None:
                continue
            for capacity in config.capacities:
                counts = replay(batches, spec.policy, capacity, pool=config.pool, transfer_s=transfer_s,
                                layer_s=config.layer_time, warm_share=config.warmup_share)  # fmt: skip
                accesses = counts.hits + counts.misses
                rows.append({"schedule": schedule, "batch_size": config.batch_size, "forwards": batches.requests // len(batches.layers),
                             "experts_per_forward_layer": per_request, "policy": spec.text, "capacity": capacity,
                             "hit_rate": counts.hits / accesses, "loads": counts.loads})  # fmt: skip
    return rows


def _row(
    name: str, capacity: int, counts: Counts, stream: StreamInfo, expert_bytes: int, transfer_s: float, layer_s: float
) -> dict[str, Any]:
    accesses = counts.hits + counts.misses
    tokens = max(stream.tokens, 1)
    all_in_gpu = stream.requests * layer_s / tokens
    no_cache = (stream.accesses * transfer_s + stream.requests * layer_s) / tokens
    row = {
        "policy": name,
        "capacity": capacity,
        "accesses": accesses,
        "hits": counts.hits,
        "misses": counts.misses,
        "hit_rate": counts.hits / accesses if accesses else 0.0,
        "loads": counts.loads,
        "bytes": counts.loads * expert_bytes,
        "streamed": counts.streamed,
        "stall_s": counts.stall_s,
        "time_per_token_s": counts.total_s / tokens,
        "all_in_gpu_time_per_token_s": all_in_gpu,
        "no_cache_time_per_token_s": no_cache,
    }
    if counts.prefetch_loads:
        row["prefetch_loads"] = counts.prefetch_loads
        row["prefetch_accuracy"] = counts.useful_prefetches / counts.prefetch_loads
        row["wasted_loads"] = counts.wasted_prefetches
    return row

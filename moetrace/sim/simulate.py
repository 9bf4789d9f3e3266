"""`moetrace simulate`: policies × capacities over a trace, with prefetching and the cost model."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.sim.engine import Counts, lru_ranks
from moetrace.sim.policies import get_policy, policy_names
from moetrace.sim.replay import Prefetch, cache_layout, replay
from moetrace.sim.stream import Stream, build_stream
from moetrace.trace.reader import Trace

#: progress(jobs_done, jobs_total, description)
Progress = Callable[[int, int, str], None]
PREFETCH_SOURCES = ("oracle", "pregate", "markov", "mlp", "popularity")


@dataclass(frozen=True)
class SimConfig:
    """What `simulate` replays; saved beside its results."""

    policies: tuple[str, ...] = ("lru", "fifo", "lfu", "belady")
    capacities: tuple[int, ...] = (8,)
    """Slots per layer, or in all when `pool`."""
    pool: bool = False
    order: str = "step"
    phase: str | None = None
    bandwidth: float = 25e9
    """Host-to-device bytes per second."""
    layer_time: float = 0.0
    """Compute seconds of one MoE layer's forward (0: not modelled)."""
    expert_bytes: int | None = None
    """Bytes of one expert; meta.json's when None."""
    prefetch_depth: int = 1
    prefetch_budget: int | None = None
    static_share: float = 0.2
    """`static` pins the hottest experts of this first share of the stream."""
    batch_size: int | None = None
    """Token scheduling: replay batches of this many sequences, arrival and grouped."""
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.bandwidth <= 0:
            raise InvalidArgumentError(f"--bandwidth must be positive, got {self.bandwidth:g} bytes/s")
        if self.layer_time < 0:
            raise InvalidArgumentError(f"--layer-time must be 0 or more, got {self.layer_time:g} s")
        if not self.capacities or min(self.capacities) < 1:
            raise InvalidArgumentError(f"--capacity must be at least 1, got {list(self.capacities)}")
        if not 0 < self.static_share < 1:
            raise InvalidArgumentError(f"the static policy's training share must be in (0, 1), got {self.static_share}")
        for name in self.policies:
            parse_policy(name)


def parse_policy(name: str) -> tuple[str, str | None]:
    """`lru` -> ('lru', None); `lru+markov` -> ('lru', 'markov'); `static` -> ('static', None)."""
    base, _, source = name.partition("+")
    if base == "static" and not source:
        return base, None
    if base not in ("lru", "fifo", "lfu", "belady") or (source and source not in PREFETCH_SOURCES):
        raise InvalidArgumentError(
            f"unknown policy {name!r}; known: {', '.join(policy_names())} (any of lru, fifo, lfu + a prefetch source: {', '.join(PREFETCH_SOURCES)})"
        )
    if base == "belady" and source:
        raise InvalidArgumentError("belady already knows the future; prefetching takes lru, fifo or lfu")
    get_policy(base)
    return base, source or None


@dataclass
class SimResult:
    config: SimConfig
    stream: Stream
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


def simulate(
    trace: Trace,
    config: SimConfig,
    *,
    predictor: str | Path | None = None,
    progress: Progress | None = None,
    stream: Stream | None = None,
) -> SimResult:
    """Replay every policy at every capacity; report hits, loads, bytes and the cost model's times."""
    stream = stream or build_stream(trace, config.order, config.phase)
    expert_bytes = config.expert_bytes or trace.meta.model.expert_bytes
    result = SimResult(config=config, stream=stream, expert_bytes=expert_bytes)
    if expert_bytes is None:
        result.notes.append(
            "the trace does not say how large an expert is (give --expert-bytes): bytes and times are 0"
        )
    transfer_s = (expert_bytes or 0) / config.bandwidth
    most = int(stream.sizes().max())
    capacity_limit = len(stream.layers) * stream.num_experts if config.pool else stream.num_experts
    for capacity in config.capacities:
        if capacity < stream.top_k:
            raise InvalidArgumentError(
                f"capacity {capacity} is smaller than top-k ({stream.top_k}): a token's experts must fit"
            )
        if capacity > capacity_limit:
            raise InvalidArgumentError(
                f"capacity {capacity} is more than the {capacity_limit} experts there are to cache"
            )
    loaded = None
    if predictor is not None:
        from moetrace.predict.path import load_path_predictor

        loaded = load_path_predictor(predictor, trace)
    plans: dict[str, Prefetch] = {}
    for name in config.policies:
        base, source = parse_policy(name)
        if source is not None and source not in plans:
            from moetrace.sim.prefetch import plan

            if source not in ("oracle", "pregate") and loaded is not None and loaded.name != source:
                raise InvalidArgumentError(f"--predictor holds a {loaded.name} predictor; the policy asks for {source}")
            plans[source] = plan(stream, source, depth=config.prefetch_depth, budget=config.prefetch_budget, trace=trace,
                                 predictor=loaded)  # fmt: skip
    jobs = [(name, capacity) for name in config.policies for capacity in config.capacities]
    done = 0

    def run(job: tuple[str, int]) -> dict[str, Any]:
        name, capacity = job
        base, source = parse_policy(name)
        if base == "static":
            counts = static_replay(stream, capacity, config.static_share, config.pool, transfer_s, config.layer_time)
        else:
            counts = replay(stream, base, capacity, pool=config.pool, prefetch=plans.get(source or ""),
                            transfer_s=transfer_s, layer_s=config.layer_time)  # fmt: skip
        return _row(name, capacity, counts, stream, expert_bytes or 0, transfer_s, config.layer_time)

    with ThreadPoolExecutor(max_workers=config.workers or os.cpu_count() or 1) as pool:
        for row in pool.map(run, jobs):
            result.results.append(row)
            done += 1
            if progress is not None:
                progress(done, len(jobs), f"{row['policy']} at {row['capacity']}")
    if any(parse_policy(p)[0] == "lru" for p in config.policies):
        result.lru_curve = lru_curve(stream, config.pool, start=most)
    if config.batch_size is not None:
        result.scheduling = schedule_rows(stream, config, transfer_s)
    return result


def schedule_rows(stream: Stream, config: SimConfig, transfer_s: float) -> list[dict[str, Any]]:
    """Experts activated per forward and layer, and each demand policy's hit rate, per schedule."""
    from moetrace.sim.schedule import SCHEDULES, scheduled_stream

    rows = []
    for schedule in SCHEDULES:
        batches = scheduled_stream(stream, config.batch_size or 1, schedule)
        per_request = float(batches.sizes().mean())
        for name in config.policies:
            base, source = parse_policy(name)
            if source is not None or base == "static":
                continue
            for capacity in config.capacities:
                counts = replay(
                    batches, base, capacity, pool=config.pool, transfer_s=transfer_s, layer_s=config.layer_time
                )
                accesses = counts.hits + counts.misses
                rows.append({"schedule": schedule, "batch_size": config.batch_size, "forwards": batches.requests // len(batches.layers),
                             "experts_per_forward_layer": per_request, "policy": name, "capacity": capacity,
                             "hit_rate": counts.hits / accesses, "loads": counts.loads})  # fmt: skip
    return rows


def _row(
    name: str, capacity: int, counts: Counts, stream: Stream, expert_bytes: int, transfer_s: float, layer_s: float
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


def static_replay(stream: Stream, capacity: int, share: float, pool: bool, transfer_s: float, layer_s: float) -> Counts:
    """`static`: the `capacity` experts most needed in the first `share` of the stream are pinned
    (per layer, or across layers in one pool); everything else is loaded when needed and not kept.
    Counted over the whole stream."""
    cache_of, ids, n_caches, n_ids = cache_layout(stream, pool)
    request_of_access = np.repeat(np.arange(stream.requests), stream.sizes())
    cut = stream.offsets[max(1, int(share * stream.requests))]
    counts = np.zeros((n_caches, n_ids), np.int64)
    np.add.at(counts, (cache_of[request_of_access[:cut]], ids[:cut]), 1)
    pinned = np.zeros((n_caches, n_ids), bool)
    for c in range(n_caches):
        pinned[c, np.argsort(-counts[c], kind="stable")[:capacity]] = True
    hit = pinned[cache_of[request_of_access], ids]
    misses_per_request = np.bincount(request_of_access[~hit], minlength=stream.requests)
    total = float(misses_per_request.sum() * transfer_s + stream.requests * layer_s)
    stall = float(misses_per_request.sum() * transfer_s)
    return Counts(int(hit.sum()), int((~hit).sum()), int((~hit).sum()), 0, 0, 0, stall, total)


def lru_curve(stream: Stream, pool: bool = False, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LRU hit rate at every capacity from the largest need-set (`start`) to all experts, in one pass."""
    cache_of, ids, n_caches, n_ids = cache_layout(stream, pool)
    ranks = lru_ranks(cache_of, stream.offsets, ids, n_caches, n_ids)
    start = start or int(stream.sizes().max())
    capacities = np.arange(max(start, stream.top_k), n_ids + 1)
    seen = np.bincount(ranks[ranks >= 0], minlength=n_ids + 1)
    hits_below = np.concatenate([[0], np.cumsum(seen)])  # hits_below[C] = accesses with position < C
    return capacities, hits_below[capacities] / len(ids)

"""Summary statistics of a trace: load balance per layer, temporal locality, inter-layer predictability.

Definitions (docs/trace-format.md repeats them):
- imbalance: max / mean of an expert's routings in a layer (1 = perfectly balanced).
- cv: coefficient of variation (std / mean) of the per-expert routings.
- entropy: entropy of the per-expert shares divided by log(num_experts) (1 = uniform).
- top10_share: share of routings that go to the busiest 10% of experts (at least one expert).
- temporal locality: |E(t) ∩ E(t+1)| / k for consecutive tokens of one sequence at the same layer.
- inter-layer predictability: recall@k of layer l+1's experts predicted from layer l's experts by a
  co-occurrence table fitted on the same trace (in-sample), beside the recall of simply
  predicting layer l+1's k most popular experts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moetrace.trace.reader import Trace

_CHUNK = 65_536


@dataclass
class LayerStats:
    layer: int
    routings: int
    imbalance: float
    cv: float
    entropy: float
    top10_share: float
    hottest: list[tuple[int, float]]
    """(expert, share) of the busiest experts."""
    temporal_locality: float | None = None
    next_layer_recall: float | None = None
    """Recall@k of the next MoE layer's experts from this layer's (co-occurrence, in-sample)."""
    next_layer_popularity_recall: float | None = None


@dataclass
class TraceStats:
    model: str | None
    model_type: str | None
    mode: str | None
    num_experts: int
    top_k: int
    sequences: int | None
    tokens: int | None
    steps: int
    phases: dict[str, int]
    """Steps per phase."""
    complete: bool
    layers: list[LayerStats] = field(default_factory=list)
    temporal_locality: float | None = None
    inter_layer_predictability: float | None = None
    inter_layer_popularity: float | None = None
    load_variance_start: float | None = None
    """Windowed variance of the load shares over the first tenth of the training steps (100+ steps)."""
    load_variance_end: float | None = None
    """The same over the last fifth of the steps: well below the start once the load has settled."""
    variance_window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for layer in data["layers"]:
            layer["hottest"] = [{"expert": e, "share": s} for e, s in layer["hottest"]]
        return data


def trace_stats(trace: Trace, hottest: int = 3) -> TraceStats:
    """Compute the summary that `moetrace inspect` shows."""
    meta = trace.meta
    num_experts, top_k = meta.model.num_experts, meta.model.top_k
    load = trace.dense_load()
    per_layer = load.tokens.sum(axis=0)  # (L, E)
    phases = {str(p): int(n) for p, n in zip(*np.unique(load.phases, return_counts=True))}
    stats = TraceStats(
        model=meta.model.name,
        model_type=meta.model.model_type,
        mode=meta.run.get("mode"),
        num_experts=num_experts,
        top_k=top_k,
        sequences=None,
        tokens=None,
        steps=len(load.steps),
        phases=phases,
        complete=meta.complete,
        layers=[_load_stats(layer, counts, hottest) for layer, counts in zip(meta.model.moe_layers, per_layer)],
    )
    if phases.get("train", 0) >= 100:
        shares = load.shares()[load.phases == "train"]
        window = max(5, len(shares) // 100)
        stats.variance_window = window
        stats.load_variance_start = windowed_variance(shares[: len(shares) // 10], window)
        stats.load_variance_end = windowed_variance(shares[-(len(shares) // 5) :], window)
    if trace.has_routes:
        _add_route_stats(trace, stats)
    return stats


def windowed_variance(shares: np.ndarray, window: int) -> float:
    """Mean over (layer, expert) series and non-overlapping windows of the variance within a window.

    `shares` is (steps, layers, experts). High while load fluctuates (the transient phase of training),
    low once it has settled (the stable phase).
    """
    usable = (len(shares) // window) * window
    if usable == 0:
        return float("nan")
    blocks = shares[:usable].reshape(usable // window, window, *shares.shape[1:])
    return float(blocks.var(axis=1).mean())


def _load_stats(layer: int, counts: np.ndarray, hottest: int) -> LayerStats:
    total = int(counts.sum())
    num_experts = len(counts)
    if total == 0:
        return LayerStats(layer, 0, math.nan, math.nan, math.nan, math.nan, [])
    shares = counts / total
    mean = counts.mean()
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / math.log(num_experts)) if num_experts > 1 else 1.0
    top_n = max(1, math.ceil(0.1 * num_experts))
    order = np.argsort(-counts, kind="stable")
    return LayerStats(
        layer=layer,
        routings=total,
        imbalance=float(counts.max() / mean),
        cv=float(counts.std() / mean),
        entropy=entropy,
        top10_share=float(counts[order[:top_n]].sum() / total),
        hottest=[(int(e), float(shares[e])) for e in order[:hottest]],
    )


def _add_route_stats(trace: Trace, stats: TraceStats) -> None:
    routes = trace.routes_arrays(["seq_id", "pos", "layer", "experts"])
    seq = routes["seq_id"].astype(np.int64)
    pos = routes["pos"].astype(np.int64)
    layer = routes["layer"].astype(np.int64)
    experts = routes["experts"].astype(np.int64)
    token_key = seq * (int(pos.max(initial=0)) + 2) + pos  # +2: no two sequences' keys are adjacent
    stats.sequences = int(len(np.unique(seq)))
    stats.tokens = int(len(np.unique(token_key)))
    order = np.lexsort((token_key, layer))
    layer, token_key, experts = layer[order], token_key[order], experts[order]
    layers = trace.meta.model.moe_layers
    bounds = np.searchsorted(layer, np.array(layers + (max(layers) + 1,)))
    k = stats.top_k
    locality_sum = locality_n = 0.0
    recall_sum = popularity_sum = recall_n = 0.0
    for i, layer_stats in enumerate(stats.layers):
        a, b = bounds[i], bounds[i + 1]
        keys, chosen = token_key[a:b], experts[a:b]
        consecutive = np.flatnonzero(np.diff(keys) == 1)
        # key + 1 is the next position of the same sequence (keys of different sequences are far apart)
        if len(consecutive):
            overlap = _overlap(chosen[consecutive], chosen[consecutive + 1])
            layer_stats.temporal_locality = float(overlap.sum() / (k * len(consecutive)))
            locality_sum += overlap.sum()
            locality_n += k * len(consecutive)
        if i + 1 < len(layers):
            c, d = bounds[i + 1], bounds[i + 2]
            here = np.searchsorted(token_key[c:d], keys)
            here = np.minimum(here, max(d - c - 1, 0))
            matched = (d > c) & (token_key[c:d][here] == keys) if d > c else np.zeros(len(keys), bool)
            if matched.any():
                src, dst = chosen[matched], experts[c:d][here[matched]]
                hits, popular_hits = _cooccurrence_recall(src, dst, stats.num_experts)
                layer_stats.next_layer_recall = hits / (k * len(src))
                layer_stats.next_layer_popularity_recall = popular_hits / (k * len(src))
                recall_sum += hits
                popularity_sum += popular_hits
                recall_n += k * len(src)
    if locality_n:
        stats.temporal_locality = locality_sum / locality_n
    if recall_n:
        stats.inter_layer_predictability = recall_sum / recall_n
        stats.inter_layer_popularity = popularity_sum / recall_n


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i ∩ b_i| per row of two (n, k) arrays of distinct expert ids."""
    out = np.empty(len(a), np.int64)
    for s in range(0, len(a), _CHUNK):
        x, y = a[s : s + _CHUNK], b[s : s + _CHUNK]
        out[s : s + _CHUNK] = (x[:, :, None] == y[:, None, :]).any(axis=2).sum(axis=1)
    return out


def _cooccurrence_recall(src: np.ndarray, dst: np.ndarray, num_experts: int) -> tuple[int, int]:
    """Hits of a co-occurrence predictor (src experts -> dst experts) and of the popularity predictor."""
    k = dst.shape[1]
    pairs = (src[:, :, None] * num_experts + dst[:, None, :]).reshape(-1)
    table = np.bincount(pairs, minlength=num_experts * num_experts).reshape(num_experts, num_experts).astype(np.float64)
    popular = np.argsort(-np.bincount(dst.reshape(-1), minlength=num_experts), kind="stable")[:k]
    hits = 0
    for s in range(0, len(src), _CHUNK // 4):
        scores = multi_hot(src[s : s + _CHUNK // 4], num_experts) @ table  # (n, E), exact in float64
        predicted = top_k_ids(scores.astype(np.int64), k)
        hits += int(_overlap(predicted, dst[s : s + _CHUNK // 4]).sum())
    popular_hits = int(np.isin(dst, popular).sum())
    return hits, popular_hits


def multi_hot(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """(n, k) expert ids -> (n, num_experts) float64 indicator rows."""
    out = np.zeros((len(ids), num_experts), np.float64)
    np.put_along_axis(out, ids.astype(np.int64), 1.0, axis=1)
    return out


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row (in no particular order); ties go to the smaller index."""
    width = scores.shape[1]
    if k >= width:
        return np.broadcast_to(np.arange(width), scores.shape).copy()
    if np.issubdtype(scores.dtype, np.integer):
        # one distinct key per entry: the score, then the smaller index; argpartition is then exact
        keys = scores.astype(np.int64) * width + (width - 1 - np.arange(width))
        return np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]

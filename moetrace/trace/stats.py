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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moetrace.errors import TraceFormatError
from moetrace.trace.reader import Trace

_CHUNK = 65_536
_BATCH_ROWS = 131_072
"""Joined rows per batch handed to the compiled loops."""


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


def trace_stats(trace: Trace, hottest: int = 3, *, memory_limit: str | None = None) -> TraceStats:
    """Compute the summary that `moetrace inspect` shows.

    Every pass is a DuckDB query over the trace's parts in place (see `moetrace.trace.query`), so
    memory holds aggregates (experts × experts per layer pair, the per-layer load) and a few
    batches of rows, not the trace: it does not grow with the number of rows."""
    from moetrace.trace.query import connect

    meta = trace.meta
    num_experts, top_k = meta.model.num_experts, meta.model.top_k
    con = connect(trace, memory_limit=memory_limit)
    try:
        per_layer, phases, steps = _load_summary(con, trace)
        stats = TraceStats(
            model=meta.model.name,
            model_type=meta.model.model_type,
            mode=meta.run.get("mode"),
            num_experts=num_experts,
            top_k=top_k,
            sequences=None,
            tokens=None,
            steps=steps,
            phases=phases,
            complete=meta.complete,
            layers=[_load_stats(layer, counts, hottest) for layer, counts in zip(meta.model.moe_layers, per_layer)],
        )
        if phases.get("train", 0) >= 100:
            load = trace.dense_load(phase="train")
            shares = load.shares()
            window = max(5, len(shares) // 100)
            stats.variance_window = window
            stats.load_variance_start = windowed_variance(shares[: len(shares) // 10], window)
            stats.load_variance_end = windowed_variance(shares[-(len(shares) // 5) :], window)
        if trace.has_routes:
            _add_route_stats(con, trace, stats)
    finally:
        con.close()
    return stats


def _load_summary(con: Any, trace: Trace) -> tuple[np.ndarray, dict[str, int], int]:
    """((L, E) routings per MoE layer and expert over all steps, steps per phase, steps).

    Counted from the load parts, or straight from the routes when there are none (the same sums
    as the derived load, without grouping by step first). A step's phase is the largest name it
    was recorded under (a step has one phase in every trace moetrace writes)."""
    from moetrace.trace.reader import check_load_indices

    if trace.load_parts:
        counts = "SELECT layer, expert, sum(tokens)::BIGINT AS n FROM load GROUP BY layer, expert"
        source = "load"
    else:
        counts = (
            "SELECT layer, expert, count(*) AS n FROM (SELECT layer, unnest(experts) AS expert FROM routes) "
            "GROUP BY layer, expert"
        )
        source = "routes"
    got = con.sql(counts).fetchnumpy()
    layer, expert = np.asarray(got["layer"], np.int64), np.asarray(got["expert"], np.int64)
    model = trace.meta.model
    layer_pos = check_load_indices(layer, expert, model.moe_layers, model.num_experts, str(trace.path))
    per_layer = np.zeros((len(model.moe_layers), model.num_experts), np.int64)
    np.add.at(per_layer, (layer_pos, expert), np.asarray(got["n"], np.int64))
    rows = con.sql(
        f"SELECT phase, count(*) FROM (SELECT step, max(phase) AS phase FROM {source} GROUP BY step) "
        "GROUP BY phase ORDER BY phase"
    ).fetchall()
    phases = {str(p): int(n) for p, n in rows}
    return per_layer, phases, sum(phases.values())


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


def _add_route_stats(con: Any, trace: Trace, stats: TraceStats) -> None:
    """Sequences, tokens, temporal locality and inter-layer predictability, from two joins of the routes.

    A token is a (seq_id, pos); its row at a layer is paired with the same layer's row of (seq_id,
    pos + 1) for temporal locality and with the next MoE layer's row of the same token for the
    co-occurrence table (pass 1) and its recall (pass 2). Joined rows stream in batches."""
    from moetrace.trace import stats_kernels as kernels

    model = trace.meta.model
    layers, k, num_experts = model.moe_layers, model.top_k, model.num_experts
    sequences, tokens, low, high, shortest, longest = con.sql(
        "SELECT count(DISTINCT seq_id), count(DISTINCT (seq_id, pos)), min(list_min(experts)), "
        "max(list_max(experts)), min(len(experts)), max(len(experts)) FROM routes"
    ).fetchall()[0]
    stats.sequences, stats.tokens = int(sequences), int(tokens)
    if stats.tokens == 0:
        return
    if shortest != k or longest != k:
        raise TraceFormatError(f"{trace.path}: column 'experts' holds lists whose length is not top_k = {k}")
    if low < 0 or high >= num_experts:
        raise TraceFormatError(f"{trace.path}: routes name an expert outside 0..{num_experts - 1}")
    unknown = con.sql(
        f"SELECT DISTINCT layer FROM routes WHERE layer NOT IN ({', '.join(map(str, layers))}) ORDER BY layer LIMIT 5"
    ).fetchall()
    if unknown:
        bad = [int(row[0]) for row in unknown]
        raise TraceFormatError(f"{trace.path}: layer(s) {bad} are not in meta.json's moe_layers {list(layers)}")
    packing = _Packing.of(num_experts, k)
    con.execute("CREATE OR REPLACE TEMP TABLE moe_layer(layer SMALLINT, idx SMALLINT)")
    con.executemany("INSERT INTO moe_layer VALUES (?, ?)", [(layer, i) for i, layer in enumerate(layers)])
    packed = (
        f"WITH p AS (SELECT m.idx, r.seq_id, r.pos, {packing.select('r.experts')} "
        "FROM routes r JOIN moe_layer m ON r.layer = m.layer) "
    )
    words_a, words_b = packing.columns("a"), packing.columns("b")
    # temporal locality: a token's experts at a layer against the next token's of its sequence
    overlap, pairs = np.zeros(len(layers), np.int64), np.zeros(len(layers), np.int64)
    successors = f"{packed} SELECT a.idx, {words_a}, {words_b} FROM p a JOIN p b ON a.idx = b.idx AND a.seq_id = b.seq_id AND b.pos = a.pos + 1"
    for layer, a, b in packing.batches(con, successors):
        kernels.overlap_sums(layer, a, b, k, packing.bits, packing.per_word, overlap)
        pairs += np.bincount(layer, minlength=len(layers))
    # inter-layer: pass 1 counts the co-occurrence table, pass 2 scores each token with it
    nexts = f"{packed} SELECT a.idx, {words_a}, {words_b} FROM p a JOIN p b ON b.idx = a.idx + 1 AND a.seq_id = b.seq_id AND b.pos = a.pos"
    table = np.zeros((max(len(layers) - 1, 1), num_experts, num_experts), np.int64)
    matched = np.zeros(len(table), np.int64)
    for layer, src, dst in packing.batches(con, nexts):
        order = np.argsort(layer, kind="stable")
        _check(kernels.count_pairs(order, layer, src, dst, k, packing.bits, packing.per_word, table), trace)
        matched += np.bincount(layer, minlength=len(table))
    hits = np.zeros(len(table), np.int64)
    if matched.any():
        scored = table.astype(np.int32) if k * int(matched.max()) < 2**31 else table
        for layer, src, dst in packing.batches(con, nexts):
            order = np.argsort(layer, kind="stable")
            _check(kernels.recall_hits(order, layer, src, dst, k, packing.bits, packing.per_word, scored, hits), trace)
    _fill_route_stats(stats, overlap, pairs, table, matched, hits)


def _fill_route_stats(
    stats: TraceStats, overlap: np.ndarray, pairs: np.ndarray, table: np.ndarray, matched: np.ndarray, hits: np.ndarray
) -> None:
    k = stats.top_k
    popular_hits = np.zeros(len(table), np.int64)
    for i, layer_stats in enumerate(stats.layers):
        if pairs[i]:
            layer_stats.temporal_locality = float(overlap[i] / (k * pairs[i]))
        if i + 1 < len(stats.layers) and matched[i]:
            dst_counts = table[i].sum(axis=0) // k  # each joined row adds k to each of its dst experts' columns
            popular_hits[i] = dst_counts[np.argsort(-dst_counts, kind="stable")[:k]].sum()
            layer_stats.next_layer_recall = float(hits[i] / (k * matched[i]))
            layer_stats.next_layer_popularity_recall = float(popular_hits[i] / (k * matched[i]))
    if pairs.sum():
        stats.temporal_locality = float(overlap.sum() / (k * pairs.sum()))
    if matched.sum():
        stats.inter_layer_predictability = float(hits.sum() / (k * matched.sum()))
        stats.inter_layer_popularity = float(popular_hits.sum() / (k * matched.sum()))


def _check(status: int, trace: Trace) -> None:
    if status < 0:
        raise TraceFormatError(f"{trace.path}: routes name an expert outside 0..{trace.meta.model.num_experts - 1}")


@dataclass(frozen=True)
class _Packing:
    """How a row's k experts are packed into unsigned 64-bit words for the joins."""

    k: int
    bits: int
    """Bits per expert id: 8 up to 256 experts, else 16."""
    per_word: int
    words: int

    @classmethod
    def of(cls, num_experts: int, k: int) -> _Packing:
        bits = 8 if num_experts <= 256 else 16
        per_word = 64 // bits
        return cls(k, bits, per_word, -(-k // per_word))

    def select(self, column: str) -> str:
        """SELECT items `w0, w1, ...` packing the list `column`."""
        items = []
        for w in range(self.words):
            parts = [
                f"(({column}[{i + 1}]::UBIGINT) << {(i % self.per_word) * self.bits})"
                for i in range(w * self.per_word, min(self.k, (w + 1) * self.per_word))
            ]
            items.append(f"{' | '.join(parts)} AS w{w}")
        return ", ".join(items)

    def columns(self, alias: str) -> str:
        return ", ".join(f"{alias}.w{w}" for w in range(self.words))

    def batches(self, con: Any, sql: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(layer index, words of a, words of b) per batch of the joined rows of `sql`."""
        for batch in con.sql(sql).to_arrow_reader(_BATCH_ROWS):
            columns = [np.asarray(c.to_numpy()) for c in batch.columns]
            layer = columns[0].astype(np.int64)
            a = np.stack(columns[1 : 1 + self.words], axis=1).astype(np.uint64)
            b = np.stack(columns[1 + self.words :], axis=1).astype(np.uint64)
            yield layer, a, b


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i ∩ b_i| per row of two (n, k) arrays of distinct expert ids."""
    out = np.empty(len(a), np.int64)
    for s in range(0, len(a), _CHUNK):
        x, y = a[s : s + _CHUNK], b[s : s + _CHUNK]
        out[s : s + _CHUNK] = (x[:, :, None] == y[:, None, :]).any(axis=2).sum(axis=1)
    return out


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

"""Prefetch plans: after a request for layer i is served, which experts to load for layer i+d.

Sources: `oracle` (the trace itself: the target request's true need-set, the upper bound of any
predictor), `pregate` (the `pregate_experts` column recorded by `record --pregate`; depth 1), or a
saved path predictor (`markov`, `mlp`, ...). In token order each token's own prediction is used;
in step order the scores of the step's tokens are summed and the best experts taken.
"""

from __future__ import annotations

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.predict.paths import PathPredictor
from moetrace.sim.replay import Prefetch
from moetrace.sim.stream import Stream
from moetrace.trace.reader import Trace


def targets(stream: Stream, depth: int) -> np.ndarray:
    """For each request, the request of the same unit `depth` layers later (−1 if none)."""
    layers = len(stream.layers)
    key = stream.unit * layers + stream.layer
    order = np.argsort(key, kind="stable")
    wanted = key + depth
    found = np.minimum(np.searchsorted(key[order], wanted), len(key) - 1)
    ok = (key[order][found] == wanted) & (stream.layer + depth < layers)
    return np.where(ok, order[found], -1)


def plan(
    stream: Stream,
    source: str,
    *,
    depth: int = 1,
    budget: int | None = None,
    trace: Trace | None = None,
    predictor: PathPredictor | None = None,
) -> Prefetch:
    """The prefetch plan of `source` for `stream`: at most `budget` experts per request (best first)."""
    if depth < 1:
        raise InvalidArgumentError(f"--prefetch-depth must be at least 1, got {depth}")
    if depth >= len(stream.layers):
        raise InvalidArgumentError(f"--prefetch-depth {depth} is past the last layer ({len(stream.layers)} MoE layers)")
    if budget is not None and budget < 1:
        raise InvalidArgumentError(f"--prefetch-budget must be at least 1, got {budget}")
    target = targets(stream, depth)
    if source == "oracle":
        has = target >= 0
        sizes = np.where(has, np.diff(stream.offsets)[np.clip(target, 0, None)], 0)
        if budget is not None:
            sizes = np.minimum(sizes, budget)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        owner = np.repeat(np.arange(stream.requests), sizes)
        within = np.arange(offsets[-1]) - offsets[owner]
        ids = stream.ids[stream.offsets[target[owner]] + within] if offsets[-1] else np.zeros(0, np.int64)
        return Prefetch(target=np.where(sizes > 0, target, -1).astype(np.int64), offsets=offsets, ids=ids)
    if trace is None:
        raise InvalidArgumentError(f"prefetching from {source} needs the trace")
    scores = _unit_scores(stream, source, depth, trace, predictor)
    keep = budget or (stream.top_k if stream.order == "token" else stream.num_experts)
    chosen = np.full((stream.requests, min(keep, stream.num_experts)), -1, np.int64)
    for source_layer, table in scores.items():
        rows = np.flatnonzero((stream.layer == source_layer) & (target >= 0))
        row_scores = table[stream.unit[rows]]
        best = np.argsort(-row_scores, axis=1, kind="stable")[:, : chosen.shape[1]]
        positive = np.take_along_axis(row_scores, best, axis=1) > 0
        chosen[rows] = np.where(positive, best, -1)
    present = chosen >= 0
    sizes = present.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Prefetch(target=np.where(sizes > 0, target, -1).astype(np.int64), offsets=offsets, ids=chosen[present])


def _unit_scores(
    stream: Stream, source: str, depth: int, trace: Trace, predictor: PathPredictor | None
) -> dict[int, np.ndarray]:
    """For each source layer: (units, num_experts) scores of the experts `depth` layers later."""
    from moetrace.predict.paths import make_path_predictor
    from moetrace.predict.paths.data import path_data

    if source == "pregate":
        if depth != 1:
            raise InvalidArgumentError("pregate prefetches one layer ahead only (--prefetch-depth 1)")
        predictor = make_path_predictor("pregate")
    elif predictor is None:
        raise InvalidArgumentError(
            f"lru+{source} needs --predictor FILE (made by `moetrace predict path --method {source} --save FILE`)"
        )
    elif predictor.name != source:
        raise InvalidArgumentError(
            f"the policy prefetches with {source}, but --predictor holds a {predictor.name} predictor"
        )
    data = path_data(trace, predictor.vocabulary)
    if predictor.lookaheads and depth not in predictor.lookaheads and predictor.name != "pregate":
        raise InvalidArgumentError(
            f"the predictor was trained for lookahead {list(predictor.lookaheads)}, not depth {depth}"
        )
    if source == "pregate":
        predictor.fit(data, (1,))
    # rows of `data` -> units of the stream
    if stream.order == "token":
        keys = np.stack([data.step, data.seq_id, data.pos], axis=1)
        unit_of_row = _match_rows(stream.unit_keys, keys)
    else:
        unit_of_row = np.searchsorted(stream.unit_keys[:, 0], data.step)
    units = len(stream.unit_keys)
    out = {}
    for source_layer in range(len(stream.layers) - depth):
        row_scores = predictor.scores(data, source_layer, depth)
        if stream.order == "token":
            # a token's own prediction: its k best experts
            table = np.zeros((units, stream.num_experts))
            best = np.argsort(-row_scores, axis=1, kind="stable")[:, : stream.top_k]
            picked = np.take_along_axis(row_scores, best, axis=1)
            ranks = np.broadcast_to(np.arange(stream.top_k, 0, -1, dtype=np.float64), best.shape)
            sub = np.zeros((len(unit_of_row), stream.num_experts))
            np.put_along_axis(sub, best, np.where(picked > 0, ranks, 0.0), axis=1)
            table[unit_of_row] = sub
        else:
            table = np.zeros((units, stream.num_experts))
            np.add.at(table, unit_of_row, np.clip(row_scores, 0, None))
        out[source_layer] = table
    return out


def _match_rows(unit_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index into `unit_keys` (sorted rows) of each row of `keys`."""
    scale = np.max(np.abs(np.concatenate([unit_keys, keys]))) + 2
    a = (unit_keys[:, 0] * scale + unit_keys[:, 1]) * scale + unit_keys[:, 2]
    b = (keys[:, 0] * scale + keys[:, 1]) * scale + keys[:, 2]
    found = np.searchsorted(a, b)
    if np.any(found >= len(a)) or np.any(a[np.minimum(found, len(a) - 1)] != b):
        raise InvalidArgumentError("the predictor's tokens do not match the stream's")
    return found

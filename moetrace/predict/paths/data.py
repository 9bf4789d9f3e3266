"""Tokens × MoE layers arrays of a trace's routes: what path predictors learn from and are tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.trace.reader import Trace, token_index


@dataclass(frozen=True)
class PathData:
    """One row per token that was routed at every MoE layer."""

    experts: np.ndarray
    """(tokens, layers, k) int64: the experts at each MoE layer, in the router's order."""
    seq_id: np.ndarray
    pos: np.ndarray
    step: np.ndarray
    """(tokens,) the forward pass (or optimizer step) each token was routed in."""
    token_id: np.ndarray | None
    """(tokens,) input token ids, or ids of the token texts of an imported trace, or None."""
    pregate: np.ndarray | None
    """(tokens, layers, k) the next MoE layer's router on this layer's output (last layer: -1), or None."""
    layers: tuple[int, ...]
    num_experts: int
    vocabulary: dict[str, int] | None = None
    """Token text -> id, for traces that carry token texts instead of ids."""

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def tokens(self) -> int:
        return int(self.experts.shape[0])

    def take(self, rows: np.ndarray) -> PathData:
        return PathData(
            experts=self.experts[rows],
            seq_id=self.seq_id[rows],
            pos=self.pos[rows],
            step=self.step[rows],
            token_id=None if self.token_id is None else self.token_id[rows],
            pregate=None if self.pregate is None else self.pregate[rows],
            layers=self.layers,
            num_experts=self.num_experts,
            vocabulary=self.vocabulary,
        )

    def split(self, train_share: float, seed: int = 0) -> tuple[PathData, PathData]:
        """By sequence: a sequence's tokens are all in the training part or all in the test part."""
        if not 0 < train_share < 1:
            raise InvalidArgumentError(f"--split must be between 0 and 1, got {train_share}")
        sequences = np.unique(self.seq_id)
        if len(sequences) < 2:
            raise InvalidArgumentError("--split needs at least two sequences; give --test-trace instead")
        shuffled = np.random.default_rng(seed).permutation(sequences)
        cut = min(max(1, round(train_share * len(sequences))), len(sequences) - 1)
        train = np.isin(self.seq_id, shuffled[:cut])
        return self.take(np.flatnonzero(train)), self.take(np.flatnonzero(~train))


def path_data(trace: Trace, vocabulary: dict[str, int] | None = None) -> PathData:
    """The routes of `trace` as tokens × layers arrays (tokens missing a layer are left out).

    Without `token_id`, a `token` text column is mapped to ids through `vocabulary` (built from these
    routes when None; texts it does not hold get id 0).
    """
    if not trace.has_routes:
        raise TraceFormatError(f"trace {trace.path} has no routes (only load); path prediction needs routes")
    available = set(trace.route_columns())
    columns = ["seq_id", "pos", "step", "layer", "experts"]
    columns += [c for c in ("token_id", "pregate_experts") if c in available]
    if "token" in available:
        columns.append("token")
    routes = trace.routes_arrays(columns)
    layers = trace.meta.model.moe_layers
    layer_pos = np.full(max(layers) + 1, -1, np.int64)
    layer_pos[list(layers)] = np.arange(len(layers))
    keys, token_row = token_index(routes["step"], routes["seq_id"], routes["pos"])
    n_tokens, n_layers, k = len(keys), len(layers), trace.meta.model.top_k
    experts = np.full((n_tokens, n_layers, k), -1, np.int64)
    experts[token_row, layer_pos[routes["layer"]]] = routes["experts"]
    complete = (experts[:, :, 0] >= 0).all(axis=1)
    pregate = None
    if "pregate_experts" in routes:
        pregate = np.full((n_tokens, n_layers, k), -1, np.int64)
        stored = np.nan_to_num(routes["pregate_experts"].astype(np.float64), nan=-1.0)  # null: no next MoE layer
        pregate[token_row, layer_pos[routes["layer"]]] = stored.astype(np.int64)
    token_id = None
    first_rows = np.full(n_tokens, -1, np.int64)
    first_rows[token_row[::-1]] = np.arange(len(token_row))[::-1]
    has_ids = "token_id" in routes and np.issubdtype(routes["token_id"].dtype, np.integer)  # all-null reads as float
    if has_ids:
        token_id = routes["token_id"][first_rows].astype(np.int64)
    elif "token" in routes:
        texts = routes["token"][first_rows]
        if vocabulary is None:
            vocabulary = {text: i + 1 for i, text in enumerate(sorted(set(texts.tolist())))}
        token_id = np.array([vocabulary.get(text, 0) for text in texts.tolist()], np.int64)
    data = PathData(
        experts=experts, seq_id=keys[:, 1], pos=keys[:, 2], step=keys[:, 0], token_id=token_id, pregate=pregate,
        layers=tuple(layers), num_experts=trace.meta.model.num_experts, vocabulary=vocabulary,
    )  # fmt: skip
    if not complete.all():
        data = data.take(np.flatnonzero(complete))
    if data.tokens == 0:
        raise TraceFormatError(f"trace {trace.path} has no token routed at every MoE layer")
    return data


def recall_at_k(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """|predicted ∩ actual| / k per row of two (n, k) arrays (k = actual's width)."""
    hits = (predicted[:, :, None] == actual[:, None, :]).any(axis=1).sum(axis=1)
    return hits / actual.shape[1]

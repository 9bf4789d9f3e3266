"""`popularity`, `markov` and `pregate`: path predictors that count, or read what `record --pregate` stored."""

from __future__ import annotations

from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.predict.paths import PathPredictor, register_path_predictor
from moetrace.predict.paths.data import PathData


def _counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(tokens, k) -> (num_experts,) how often each expert was chosen."""
    return np.bincount(experts.reshape(-1), minlength=num_experts).astype(np.float64)


def _checked(tensor: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if tensor.shape != shape:
        raise ValueError(f"tensor {name} has shape {tensor.shape}, expected {shape}")
    return tensor


@register_path_predictor("popularity")
class Popularity(PathPredictor):
    """The target layer's most used experts in the training tokens, whatever the token."""

    def fit(self, data: PathData, lookaheads: tuple[int, ...]) -> None:
        super().fit(data, lookaheads)
        self.popular = np.stack([_counts(data.experts[:, i], data.num_experts) for i in range(len(data.layers))])

    def scores(self, data: PathData, source: int, lookahead: int) -> np.ndarray:
        return np.broadcast_to(self.popular[source + lookahead], (data.tokens, self.num_experts))

    def state(self) -> dict[str, np.ndarray]:
        return {"popular": self.popular}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.popular = _checked(state["popular"], (len(self.layers), self.num_experts), "popular")


@register_path_predictor("markov")
class Markov(PathPredictor):
    """Co-occurrence of layer i's experts with layer i+d's: score(b) = Σ_{a ∈ experts at i} P(b | a).

    P(b | a) = (C[a, b] + α · popularity(b)) / (Σ_b C[a, b] + α): counts smoothed towards the target
    layer's popularity (α = `smoothing`, in counts), so that a rarely seen expert a still votes sensibly.
    """

    def __init__(self, smoothing: float = 1.0, **options: Any) -> None:
        if smoothing < 0:
            raise InvalidArgumentError(f"markov smoothing must be 0 or more, got {smoothing}")
        super().__init__(smoothing=smoothing, **options)
        self.smoothing = smoothing
        self.tables: dict[int, np.ndarray] = {}
        """lookahead -> (source layers, E, E) P(target expert | source expert)"""

    def fit(self, data: PathData, lookaheads: tuple[int, ...]) -> None:
        super().fit(data, lookaheads)
        e, layers = data.num_experts, len(data.layers)
        for d in lookaheads:
            tables = np.zeros((layers, e, e))
            for i in range(layers - d):
                source, target = data.experts[:, i], data.experts[:, i + d]
                pairs = (source[:, :, None] * e + target[:, None, :]).reshape(-1)
                counts = np.bincount(pairs, minlength=e * e).reshape(e, e).astype(np.float64)
                popular = _counts(target, e)
                popular /= max(popular.sum(), 1.0)
                total = counts.sum(axis=1, keepdims=True) + self.smoothing
                tables[i] = np.divide(counts + self.smoothing * popular, total, out=np.zeros((e, e)), where=total > 0)
            self.tables[d] = tables

    def scores(self, data: PathData, source: int, lookahead: int) -> np.ndarray:
        table = self.tables[lookahead][source]
        return table[data.experts[:, source]].sum(axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {f"tables.{d}": t for d, t in self.tables.items()}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        shape = (len(self.layers), self.num_experts, self.num_experts)
        self.tables = {d: _checked(state[f"tables.{d}"], shape, f"tables.{d}") for d in self.lookaheads}


@register_path_predictor("pregate")
class Pregate(PathPredictor):
    """The next MoE layer's router applied to this layer's output, as `record --pregate` stored it."""

    max_lookahead = 1
    needs_fit = False

    def fit(self, data: PathData, lookaheads: tuple[int, ...]) -> None:
        super().fit(data, lookaheads)

    def scores(self, data: PathData, source: int, lookahead: int) -> np.ndarray:
        if data.pregate is None:
            raise InvalidArgumentError(
                "pregate needs the trace's pregate_experts column: record it with `moetrace record --pregate`"
            )
        chosen = data.pregate[:, source]
        scores = np.zeros((data.tokens, data.num_experts))
        rank = np.arange(chosen.shape[1], 0, -1, dtype=np.float64)  # the router's order: first is best
        np.put_along_axis(scores, np.clip(chosen, 0, None), np.where(chosen >= 0, rank, 0.0), axis=1)
        return scores

"""Routing-path predictors: one registry, one module per family of methods.

A path predictor answers: for a token at MoE layer i, which experts will it use at layer i+d?
It may use what is known before layer i+d runs: the token, and its experts at layers ≤ i (and,
for `pregate`, the next layer's router applied to layer i's output, recorded by `record --pregate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.predict.paths.data import PathData

PATH_PREDICTORS: dict[str, type[PathPredictor]] = {}


def register_path_predictor(name: str) -> Callable[[type[PathPredictor]], type[PathPredictor]]:
    def decorator(cls: type[PathPredictor]) -> type[PathPredictor]:
        cls.name = name
        PATH_PREDICTORS[name] = cls
        return cls

    return decorator


class PathPredictor:
    """Fitted on training tokens, then scores every expert of layer i+d for each (token, layer i)."""

    name: ClassVar[str] = ""
    max_lookahead: ClassVar[int | None] = None
    """The largest lookahead the method can answer (None: any)."""
    needs_fit: ClassVar[bool] = True
    """Fitted on a trace and saved (`predict path --save`); False: read from what the run records."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.num_experts = 0
        self.top_k = 0
        self.layers: tuple[int, ...] = ()
        self.vocabulary: dict[str, int] | None = None
        """Token text -> id of the training trace, reused on other traces (for the mlp's token input)."""
        self.lookaheads: tuple[int, ...] = ()

    def fit(self, data: PathData, lookaheads: tuple[int, ...]) -> None:
        self.num_experts, self.top_k, self.layers = data.num_experts, data.top_k, data.layers
        self.vocabulary = data.vocabulary
        self.lookaheads = lookaheads

    def scores(self, data: PathData, source: int, lookahead: int) -> np.ndarray:
        """(tokens, num_experts) scores for the experts of layer index `source + lookahead`."""
        raise NotImplementedError

    def predict(self, data: PathData, source: int, lookahead: int, k: int | None = None) -> np.ndarray:
        """(tokens, k) predicted experts of layer index `source + lookahead`, best first."""
        from moetrace.trace.stats import top_k_ids

        scores = self.scores(data, source, lookahead)
        k = k or self.top_k
        chosen = top_k_ids(scores, k)
        order = np.argsort(-np.take_along_axis(scores, chosen, axis=1), axis=1, kind="stable")
        return np.take_along_axis(chosen, order, axis=1)

    def state(self) -> dict[str, np.ndarray]:
        """What `save` keeps besides the options and the model shape: named tensors (see `predict/files.py`)."""
        return {}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take back what `state` returned (read from a predictor file)."""


def make_path_predictor(name: str, **options: Any) -> PathPredictor:
    from moetrace.predict.paths import methods, neural  # noqa: F401  (registration)

    if name not in PATH_PREDICTORS:
        raise InvalidArgumentError(
            f"unknown path prediction method {name!r}; choose from {', '.join(path_method_names())}"
        )
    return PATH_PREDICTORS[name](**options)


def path_method_names() -> list[str]:
    from moetrace.predict.paths import methods, neural  # noqa: F401

    return list(PATH_PREDICTORS)

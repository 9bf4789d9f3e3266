"""Routing-path prediction: fit predictors on training tokens, measure recall@k on unseen sequences."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError, MoetraceError, PredictorFileError
from moetrace.predict.paths import PathPredictor, make_path_predictor
from moetrace.predict.paths.data import PathData, path_data, recall_at_k
from moetrace.trace.reader import Trace

DEFAULT_METHODS = ("popularity", "markov", "mlp")

#: progress(units_done, units_total, description)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PathConfig:
    """How path predictors are trained and evaluated; saved with them."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Path predictors to compare: popularity, markov, mlp, pregate."""
    lookaheads: tuple[int, ...] = (1,)
    """Layers ahead to predict (d in layer l → l + d)."""
    split: float = 0.8
    """Share of sequences to train on when no test trace is given (split by sequence)."""
    seed: int = 0
    """Seed for the split and the mlp."""
    mlp_train_steps: int | None = None
    """Optimizer steps for the mlp predictor; its own default when None."""

    def __post_init__(self) -> None:
        from moetrace.predict.paths import path_method_names

        if not self.methods:
            raise InvalidArgumentError("give at least one --method")
        unknown = [m for m in self.methods if m not in path_method_names()]
        if unknown:
            raise InvalidArgumentError(
                f"unknown path prediction method {unknown[0]!r}; choose from {', '.join(path_method_names())}"
            )
        if not self.lookaheads or min(self.lookaheads) < 1:
            raise InvalidArgumentError(f"--lookahead must be at least 1, got {list(self.lookaheads)}")
        if not 0 < self.split < 1:
            raise InvalidArgumentError(f"--split must be between 0 and 1, got {self.split}")
        if self.mlp_train_steps is not None and self.mlp_train_steps < 1:
            raise InvalidArgumentError(f"--train-steps must be at least 1, got {self.mlp_train_steps}")


@dataclass
class PathEvaluation:
    config: PathConfig
    train: PathData
    test: PathData
    results: list[dict[str, Any]] = field(default_factory=list)
    """{method, lookahead, recall, per_layer, us_per_prediction}"""
    predictors: dict[str, PathPredictor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "train": {"tokens": self.train.tokens, "sequences": int(len(np.unique(self.train.seq_id)))},
            "test": {"tokens": self.test.tokens, "sequences": int(len(np.unique(self.test.seq_id)))},
            "layers": list(self.test.layers),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()},
            "notes": self.notes,
        }


def check_lookaheads(lookaheads: tuple[int, ...], layers: int) -> None:
    if max(lookaheads) >= layers:
        raise InvalidArgumentError(
            f"lookahead {max(lookaheads)} is past the last layer: the trace has {layers} MoE layers, "
            f"so a lookahead is at most {layers - 1}"
        )


def evaluate_paths(
    trace: Trace,
    config: PathConfig,
    *,
    test_trace: Trace | None = None,
    load: str | Path | None = None,
    progress: Progress | None = None,
    predictor_options: dict[str, dict[str, Any]] | None = None,
) -> PathEvaluation:
    """Fit each method on the training tokens and report recall@k per lookahead on the test tokens.

    Without `test_trace` the trace's sequences are split (`config.split` to train); with `load`, a
    saved predictor is evaluated instead of fitting one.
    """
    if config.mlp_train_steps is not None:
        mlp = {"train_steps": config.mlp_train_steps, "seed": config.seed, **(predictor_options or {}).get("mlp", {})}
        predictor_options = {**(predictor_options or {}), "mlp": mlp}
    loaded = load_path_predictor(load, trace) if load is not None else None
    vocabulary = loaded.vocabulary if loaded is not None else None
    data = path_data(trace, vocabulary)
    check_lookaheads(config.lookaheads, len(data.layers))
    if test_trace is not None:
        _same_shape(trace, test_trace, "--test-trace")
        train, test = data, path_data(test_trace, data.vocabulary)
    else:
        train, test = data.split(config.split, config.seed)
    result = PathEvaluation(config=config, train=train, test=test)
    units, done = len(config.methods) * (1 + len(config.lookaheads)), 0
    for method in config.methods:
        if loaded is not None:
            if loaded.name != method:
                raise InvalidArgumentError(f"--load holds a {loaded.name} predictor, not {method}")
            predictor = loaded
        else:
            predictor = make_path_predictor(method, **(predictor_options or {}).get(method, {}))
            usable = tuple(
                d for d in config.lookaheads if predictor.max_lookahead is None or d <= predictor.max_lookahead
            )
            if progress is not None:
                progress(done, units, f"fitting {method}")
            predictor.fit(train, usable)
        result.predictors[method] = predictor
        done += 1
        for d in config.lookaheads:
            if progress is not None:
                progress(done, units, f"{method}, lookahead {d}")
            done += 1
            if predictor.max_lookahead is not None and d > predictor.max_lookahead:
                result.notes.append(f"{method} answers lookahead ≤ {predictor.max_lookahead} only")
                continue
            per_layer, seconds = [], 0.0
            for source in range(len(test.layers) - d):
                started = time.perf_counter()
                predicted = predictor.predict(test, source, d, k=test.top_k)
                seconds += time.perf_counter() - started
                per_layer.append(float(recall_at_k(predicted, test.experts[:, source + d]).mean()))
            result.results.append(
                {
                    "method": method,
                    "lookahead": d,
                    "recall": float(np.mean(per_layer)),
                    "per_layer": per_layer,
                    "us_per_prediction": 1e6 * seconds / (test.tokens * len(per_layer)),
                }
            )
    if progress is not None:
        progress(units, units, "done")
    return result


def predict_paths(
    trace: Trace | str | Path,
    config: PathConfig,
    *,
    test_trace: Trace | str | Path | None = None,
    load: str | Path | None = None,
    save: str | Path | None = None,
    progress: Progress | None = None,
) -> PathEvaluation:
    """What `moetrace predict path` does: evaluate `config`'s methods on `trace` (or a predictor saved
    at `load`); with `save`, keep the fitted predictor (one method) for `simulate` and `run --offload`."""
    from moetrace.trace.reader import open_trace

    if (save or load) and len(config.methods) != 1:
        raise InvalidArgumentError("--save and --load take exactly one --method")
    opened = trace if isinstance(trace, Trace) else open_trace(trace)
    test = test_trace if test_trace is None or isinstance(test_trace, Trace) else open_trace(test_trace)
    result = evaluate_paths(opened, config, test_trace=test, load=load, progress=progress)
    if save is not None:
        save_path_predictor(result.predictors[config.methods[0]], save, opened, config.lookaheads)
    return result


def _same_shape(trace: Trace, other: Trace, what: str) -> None:
    a, b = trace.meta.model, other.meta.model
    if (a.num_experts, a.top_k, a.moe_layers) != (b.num_experts, b.top_k, b.moe_layers):
        raise InvalidArgumentError(
            f"{what} has {len(b.moe_layers)} MoE layers × {b.num_experts} experts, top-{b.top_k}; the trace has "
            f"{len(a.moe_layers)} × {a.num_experts}, top-{a.top_k}"
        )


def save_path_predictor(predictor: PathPredictor, path: str | Path, trace: Trace, lookaheads: tuple[int, ...]) -> None:
    """Save a fitted predictor as a safetensors file (`.safetensors`; no pickle, see `predict/files.py`).

    Its state (count tables, popularity, network weights, the token vocabulary) is stored as tensors; the
    header holds the method and its options, the model shape, the lookaheads and the training trace's hash.
    """
    from moetrace.predict.files import PATH_PREDICTOR, model_shape, vocabulary_tensors, write_predictor_file
    from moetrace.predict.load import trace_hash

    vocabulary = predictor.vocabulary
    header = {
        "method": predictor.name,
        "options": predictor.options,
        "model": {**model_shape(trace), "vocabulary_size": None if vocabulary is None else len(vocabulary)},
        "lookaheads": [int(d) for d in lookaheads],
        "trace_hash": trace_hash(trace),
        "trained_on": str(trace.path),
    }
    write_predictor_file(path, PATH_PREDICTOR, header, {**predictor.state(), **vocabulary_tensors(vocabulary)})


def check_predictor_shape(
    predictor: PathPredictor, path: str | Path, moe_layers: Any, num_experts: int, top_k: int, subject: str
) -> None:
    """Refuse a predictor saved for another model shape (MoE layers, experts, top-k) than `subject`'s."""
    if (list(predictor.layers), predictor.num_experts, predictor.top_k) != (list(moe_layers), num_experts, top_k):
        raise InvalidArgumentError(
            f"predictor {path} was saved for a model with {len(predictor.layers)} MoE layers × "
            f"{predictor.num_experts} experts, top-{predictor.top_k}; {subject} has {len(moe_layers)} × "
            f"{num_experts}, top-{top_k}"
        )


def load_path_predictor(path: str | Path, trace: Trace | None = None) -> PathPredictor:
    """A predictor saved by `predict path --save`; refused when saved for another model shape than `trace`'s.

    The file is read as safetensors only (never unpickled): a pickle, a foreign or truncated file, or a
    newer format version raises `PredictorFileError`.
    """
    from moetrace.predict.files import PATH_PREDICTOR, read_predictor_file, vocabulary_from

    header, tensors = read_predictor_file(path, PATH_PREDICTOR)
    try:
        shape = header["model"]
        predictor = make_path_predictor(str(header["method"]), **header["options"])
        predictor.num_experts, predictor.top_k = int(shape["num_experts"]), int(shape["top_k"])
        predictor.layers = tuple(int(layer) for layer in shape["moe_layers"])
        predictor.lookaheads = tuple(int(d) for d in header["lookaheads"])
    except MoetraceError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorFileError(f"{path} has an incomplete moetrace predictor header (missing or bad {exc})") from None
    if trace is not None:
        model = trace.meta.model
        check_predictor_shape(predictor, path, model.moe_layers, model.num_experts, model.top_k, "this trace's model")
    try:
        predictor.restore(tensors)
        predictor.vocabulary = vocabulary_from(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PredictorFileError(f"{path}: its tensors do not fit its {predictor.name} header ({reason})") from None
    return predictor

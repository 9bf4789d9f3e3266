"""`moetrace record --train`: load a model and its training text, train it, record every optimizer step's load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moetrace.errors import InvalidArgumentError
from moetrace.trace.reader import Trace
from moetrace.trace.writer import check_output_dir
from moetrace.train.data import read_training_text, tokenize_text
from moetrace.train.loop import TrainConfig, TrainProgress, train_and_record


def record_training(
    model: str | Any | None = None,
    data: str | Path | None = None,
    out: str | Path = "trace",
    *,
    config: TrainConfig | None = None,
    tokenizer: Any = None,
    save_model: str | Path | None = None,
    force: bool = False,
    progress: TrainProgress | None = None,
    **options: Any,
) -> Trace:
    """Train `model` (hub id, folder, loaded model, or None for the built-in model) on `data` for
    `steps` optimizer steps and record its per-step expert load. `config` (a `TrainConfig`) says how,
    and which model and data when `model` and `data` are None; or give its fields as keyword `options`.
    With `from_scratch` the model's weights are first re-initialised (seeded): same shape, no training.
    The resolved configuration is stored in the trace's meta.json."""
    from moetrace.models.loading import LoadedModel, load_model

    if config is not None and options:
        raise TypeError(f"give a TrainConfig or its fields, not both: {', '.join(options)}")
    config = config if config is not None else TrainConfig(**options)
    if model is None and config.model is not None:
        model = config.model
    data = config.data if data is None else data
    out = Path(out)
    check_output_dir(out, force)
    if save_model is not None:
        check_output_dir(Path(save_model), force)
    text, source = read_training_text(data)
    if isinstance(model, torch.nn.Module):
        loaded = LoadedModel(model=model, tokenizer=tokenizer, name=_name(model))
    else:
        loaded = load_model(
            model, device=config.device, dtype=config.torch_dtype, trust_remote_code=config.trust_remote_code
        )
    if loaded.tokenizer is None:
        raise InvalidArgumentError("training on text needs the model's tokenizer")
    tokens = tokenize_text(loaded.tokenizer, text, loaded.tokenizer.eos_token_id)
    if config.from_scratch:
        loaded.model = _reinitialised(loaded.model, config.seed)
    torch.manual_seed(config.seed)
    trace = train_and_record(
        loaded.model, tokens, out, config, name=loaded.name, run={"data": source, "data_tokens": len(tokens)},
        force=force, progress=progress,
    )  # fmt: skip
    if save_model is not None:
        loaded.model.save_pretrained(save_model)
        loaded.tokenizer.save_pretrained(save_model)
    return trace


def _reinitialised(model: Any, seed: int) -> Any:
    """A model of the same configuration with fresh seeded weights, on the same device and dtype."""
    from transformers import AutoModelForCausalLM

    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config)
    return fresh.to(device=parameter.device, dtype=parameter.dtype)


def _name(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or type(model).__name__

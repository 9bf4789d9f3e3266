"""`moetrace.record`: generate from prompts with a model and record its routing into a trace."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from moetrace.errors import InvalidArgumentError, PromptsError
from moetrace.trace.reader import Trace, open_trace
from moetrace.trace.writer import DEFAULT_FLUSH_ROWS, DEFAULT_FLUSH_SECONDS, check_output_dir

#: progress(sequences_done, sequences_total, tokens_routed_in_this_forward)
Progress = Callable[[int, int, int], None]
LISTED = "list"
"""`RecordConfig.prompts` of prompts given as a list."""


@dataclass(frozen=True)
class RecordConfig:
    """Everything that decides what `record` produces; stored in the trace's meta.json."""

    model: str | None = None
    """Hub id or local folder; None for the built-in model (the name of a model given loaded)."""
    prompts: str | None = None
    """A .txt or .jsonl file; None or `built-in` for the built-in prompt set (`list` for prompts given as a list)."""
    max_new_tokens: int = 32
    """Tokens generated per prompt (greedy); 0 records the prefill only."""
    batch_size: int = 8
    """Prompts per batch, left-padded to the longest."""
    device: str = "auto"
    """cpu, cuda (or cuda:N) or auto (cuda when torch sees a GPU)."""
    dtype: str = "auto"
    """auto (float32 on the CPU, the checkpoint's dtype on a GPU), float32, bfloat16, float16 or float64."""
    seed: int = 0
    """Seed for torch before the run."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    flush_rows: int = DEFAULT_FLUSH_ROWS
    """Route rows per Parquet part."""
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    """A part is also written once its first row has waited this long: a killed run loses about this much."""
    pregate: bool = False
    """Also store, per token and MoE layer, the next MoE layer's router applied to this layer's output."""

    def __post_init__(self) -> None:
        from moetrace.models.loading import resolve_device, resolve_dtype
        from moetrace.models.prompts import BUILTIN

        if self.max_new_tokens < 0:
            raise InvalidArgumentError(f"--max-new-tokens must be 0 or more, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.flush_rows < 1:
            raise InvalidArgumentError(f"flush_rows must be at least 1, got {self.flush_rows}")
        if self.flush_seconds <= 0:
            raise InvalidArgumentError(f"flush_seconds must be positive, got {self.flush_seconds}")
        resolve_dtype(self.dtype, resolve_device(self.device))  # refused before any model is loaded or built
        if self.prompts not in (None, BUILTIN, LISTED) and not Path(self.prompts).is_file():
            path = Path(self.prompts)
            raise PromptsError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")


def record(
    model: str | Any | None = None,
    prompts: str | Path | Sequence[str] | Sequence[Sequence[int]] | None = None,
    out: str | Path = "trace",
    *,
    config: RecordConfig | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> Trace:
    """Generate greedily from `prompts` with `model` and record every forward pass's routing to `out`.

    `model` is a hub id, a local folder, None (the built-in model) or an already loaded
    `transformers` model (then pass its `tokenizer`, unless the prompts are token ids).
    `prompts` is a file path, a list of strings, a list of token-id lists, or None for the built-in
    set. `name` names a loaded model in meta.json. `config` (a `RecordConfig`) says how, and which
    model and prompts when `model` and `prompts` are None; or give its fields as keyword `options`.
    The resolved configuration is stored in the trace's meta.json. Returns the finished trace.
    """
    from moetrace.models.generation import encode_prompts, end_of_sequence_ids, generate, left_pad, pad_token_id
    from moetrace.models.loading import LoadedModel, load_model
    from moetrace.models.prompts import BUILTIN, load_prompts
    from moetrace.trace.recorder import tracing

    if config is not None and options:
        raise TypeError(f"give a RecordConfig or its fields, not both: {', '.join(options)}")
    if config is not None:
        model = config.model if model is None else model
        prompts = config.prompts if prompts is None else prompts
    prompt_list: list[Any] = list(prompts) if isinstance(prompts, (list, tuple)) else load_prompts(prompts)  # type: ignore[arg-type]
    if not prompt_list:
        raise PromptsError("no prompts given")
    source = LISTED if isinstance(prompts, (list, tuple)) else str(prompts or BUILTIN)
    given = model if isinstance(model, torch.nn.Module) else None
    name = (name or _model_name(given)) if given is not None else model
    config = (
        replace(config, model=name, prompts=source) if config else RecordConfig(model=name, prompts=source, **options)
    )
    out = Path(out)
    check_output_dir(out, force)  # refuse early, before minutes of model loading; created once the model runs
    if given is not None:
        loaded = LoadedModel(model=given, tokenizer=tokenizer, name=str(name))
    else:
        loaded = load_model(name, device=config.device, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
    hf_model, tokenizer = loaded.model, loaded.tokenizer
    device = next(hf_model.parameters()).device
    encoded = encode_prompts(tokenizer, prompt_list)
    pad_id = pad_token_id(hf_model, tokenizer)
    eos_ids = end_of_sequence_ids(hf_model, tokenizer)
    torch.manual_seed(config.seed)

    run = {**asdict(config), "device": str(device), "num_sequences": len(prompt_list), "greedy": True}
    done = 0

    def on_forward(tokens: int) -> None:
        if progress is not None:
            progress(done, len(prompt_list), tokens)

    with (
        tracing(
            hf_model,
            out,
            force=force,
            name=loaded.name,
            run=run,
            eos_token_ids=eos_ids,
            flush_rows=config.flush_rows,
            flush_seconds=config.flush_seconds,
            on_forward=on_forward,
            pregate=config.pregate,
        ) as tracer,
        torch.inference_mode(),
    ):
        for start in range(0, len(encoded), config.batch_size):
            batch = encoded[start : start + config.batch_size]
            input_ids, attention_mask = left_pad(batch, pad_id, device)
            tracer.begin_batch(range(start, start + len(batch)))
            generate(hf_model, input_ids, attention_mask, config.max_new_tokens, pad_id, eos_ids)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompt_list), 0)
    return open_trace(out)


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or type(model).__name__

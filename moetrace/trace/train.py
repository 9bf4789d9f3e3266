"""`moetrace record --train`: train or fine-tune a model and record the load of every optimizer step.

The load of every MoE layer is summed over a step's micro-batches on the device and crosses to
the host once per optimizer step (phase `train`). Every `routes_every` steps the routes of the
first `routes_sample` sequences of the batch are recorded too, with `seq_id = step × batch_size + row`.
The router's auxiliary load-balancing loss is added with `aux_loss_coef`, as in real MoE training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from moetrace.errors import InvalidArgumentError, MoetraceError
from moetrace.trace.reader import Trace, open_trace
from moetrace.trace.writer import DEFAULT_FLUSH_ROWS, check_output_dir

#: progress(steps_done, steps_total, loss)
TrainProgress = Callable[[int, int, float], None]


class DataTooShortError(MoetraceError):
    """The training text does not hold one batch."""


@dataclass(frozen=True)
class TrainConfig:
    """How a training run is recorded; stored in the trace's meta.json."""

    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per optimizer step (split over `grad_accum` micro-batches)."""
    seq_len: int = 64
    """Tokens per training sequence."""
    lr: float = 1e-3
    """Peak learning rate (AdamW; linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int | None = None
    """Warm-up steps; 5% of `steps` when None."""
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01
    """Weight of the router's load-balancing loss; 0 switches it off."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; their load is summed into the step."""
    routes_every: int = 0
    """Record the routes of a sample of tokens every this many steps (0: load only)."""
    routes_sample: int = 4
    """Sequences of the batch whose routes are recorded at those steps."""
    seed: int = 0
    flush_rows: int = DEFAULT_FLUSH_ROWS

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.aux_loss_coef >= 0, f"--aux-loss-coef must be 0 or more, got {self.aux_loss_coef}"),
            (self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             f"--grad-accum must divide --batch-size ({self.batch_size}), got {self.grad_accum}"),
            (self.routes_every >= 0, f"--routes-every must be 0 or more, got {self.routes_every}"),
            (self.routes_sample >= 1, f"--routes-sample must be at least 1, got {self.routes_sample}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_and_record(
    model: Any,
    tokens: torch.Tensor,
    out: str | Path,
    config: TrainConfig,
    *,
    name: str | None = None,
    run: dict[str, Any] | None = None,
    force: bool = False,
    progress: TrainProgress | None = None,
) -> Trace:
    """Train `model` on windows of the 1-D token stream `tokens`, recording its load into a trace."""
    from moetrace.trace.recorder import tracing

    needed = config.batch_size * (config.seq_len + 1)
    if len(tokens) < needed:
        raise DataTooShortError(
            f"the training data holds {len(tokens):,} tokens; one batch of {config.batch_size} × "
            f"{config.seq_len + 1} needs {needed:,}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    micro = config.batch_size // config.grad_accum
    losses: list[float] = []
    meta_run = {"mode": "train", **asdict(config), **(run or {})}
    model.train()
    with_aux = config.aux_loss_coef > 0
    try:
        with tracing(
            model, out, force=force, name=name, run=meta_run, optimizer_steps=True, flush_rows=config.flush_rows
        ) as tracer:
            for step in range(config.steps):
                starts = torch.randint(0, len(tokens) - config.seq_len, (config.batch_size,), generator=generator)
                windows = torch.stack([tokens[s : s + config.seq_len + 1] for s in starts.tolist()]).to(device)
                sample_routes = config.routes_every > 0 and step % config.routes_every == 0
                step_loss = 0.0
                for part in range(config.grad_accum):
                    batch = windows[part * micro : (part + 1) * micro]
                    if sample_routes and part == 0:
                        rows = torch.arange(micro)
                        tracer.begin_batch(
                            torch.where(rows < config.routes_sample, step * config.batch_size + rows, -1).tolist()
                        )
                    loss, with_aux = _loss(model, batch, config.aux_loss_coef if with_aux else 0.0)
                    (loss / config.grad_accum).backward()
                    step_loss += float(loss.detach()) / config.grad_accum
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                tracer.end_step()
                losses.append(round(step_loss, 4))
                if progress is not None:
                    progress(step + 1, config.steps, step_loss)
            tracer.run_updates["losses"] = losses
    finally:
        model.eval()
    return open_trace(out)


def _loss(model: Any, batch: torch.Tensor, aux_loss_coef: float) -> tuple[torch.Tensor, bool]:
    """Next-token cross-entropy, plus the router's load-balancing loss when the family reports one."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if aux_loss_coef > 0:
        output = model(input_ids=inputs, output_router_logits=True, use_cache=False)
    else:
        output = model(input_ids=inputs, use_cache=False)
    logits = output.logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    aux = getattr(output, "aux_loss", None)
    if aux_loss_coef > 0 and aux is None:
        warnings.warn(f"{type(model).__name__} reports no router auxiliary loss; training without one", stacklevel=3)
        return loss, False
    if aux is not None and aux_loss_coef > 0:
        loss = loss + aux_loss_coef * aux
    return loss, aux_loss_coef > 0


def tokenize_text(tokenizer: Any, text: str, eos_id: int | None) -> torch.Tensor:
    """One token stream for a whole text: paragraphs tokenized in batches, joined by end-of-sequence."""
    documents = [d for d in text.split("\n\n") if d.strip()]
    ids: list[int] = []
    for start in range(0, len(documents), 512):
        encoded = tokenizer(documents[start : start + 512], add_special_tokens=False)["input_ids"]
        for document in encoded:
            ids.extend(document)
            if eos_id is not None:
                ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def read_training_text(data: str | Path | None) -> tuple[str, str]:
    """(text, source name): a .txt file, the `text`/`prompt` fields of a .jsonl file, or the demo corpus."""
    if data is None:
        from moetrace.models.demo_model import demo_corpus

        return "\n\n".join(demo_corpus()), "demo corpus"
    path = Path(data)
    if not path.is_file():
        raise MoetraceError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".jsonl":
        from moetrace.models.prompts import load_prompts

        return "\n\n".join(load_prompts(path)), str(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise MoetraceError(f"data file {path} is not UTF-8 text") from None


def record_training(
    model: str | Any | None = None,
    data: str | Path | None = None,
    out: str | Path = "trace",
    *,
    tokenizer: Any = None,
    from_scratch: bool = False,
    save_model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    force: bool = False,
    progress: TrainProgress | None = None,
    **options: Any,
) -> Trace:
    """Train `model` (hub id, folder, loaded model, or None for the built-in model) on `data` for
    `steps` optimizer steps and record its per-step expert load; other options: `TrainConfig`.
    With `from_scratch` the model's weights are first re-initialised (seeded): same shape, no training."""
    from moetrace.models.loading import LoadedModel, load_model

    config = TrainConfig(**options)
    out = Path(out)
    check_output_dir(out, force)
    if save_model is not None:
        check_output_dir(Path(save_model), force)
    text, source = read_training_text(data)
    if isinstance(model, torch.nn.Module):
        loaded = LoadedModel(model=model, tokenizer=tokenizer, name=_name(model))
    else:
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if loaded.tokenizer is None:
        raise InvalidArgumentError("training on text needs the model's tokenizer")
    tokens = tokenize_text(loaded.tokenizer, text, loaded.tokenizer.eos_token_id)
    if from_scratch:
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

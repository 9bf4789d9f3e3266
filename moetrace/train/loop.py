"""Training with recording: the loop behind `moetrace record --train` and the demo model's build.

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
from moetrace.trace.recorder import tracing
from moetrace.trace.writer import DEFAULT_FLUSH_ROWS

#: progress(steps_done, steps_total, loss)
TrainProgress = Callable[[int, int, float], None]


class DataTooShortError(MoetraceError):
    """The training text does not hold one batch."""


@dataclass(frozen=True)
class TrainConfig:
    """How a training run is recorded; stored in the trace's meta.json.

    `model` … `from_scratch` say what `record_training` loads; `train_and_record`, given a loaded
    model and its tokens, reads the rest."""

    model: str | None = None
    """Hub id or local folder; None for the built-in demo model (the name of a model given loaded)."""
    data: str | None = None
    """Training text: .txt, or .jsonl with a text/prompt field; None for the demo corpus."""
    device: str = "auto"
    """cpu, cuda (or cuda:N) or auto (cuda when torch sees a GPU)."""
    dtype: str = "auto"
    """auto (float32: training keeps full precision), float32, bfloat16, float16 or float64."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    from_scratch: bool = False
    """Re-initialise the model's weights (seeded) before training: same shape, trained from nothing."""
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
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    aux_loss_coef: float = 0.01
    """Weight of the router's load-balancing loss; 0 switches it off."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; their load is summed into the step."""
    routes_every: int = 0
    """Record the routes of a sample of tokens every this many steps (0: load only)."""
    routes_sample: int = 4
    """Sequences of the batch whose routes are recorded at those steps."""
    seed: int = 0
    """Seed for the batches, the re-initialised weights and torch."""
    flush_rows: int = DEFAULT_FLUSH_ROWS
    """Route rows per Parquet part."""

    def __post_init__(self) -> None:
        from moetrace.models.loading import resolve_device, resolve_dtype

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
            (self.warmup_steps is None or self.warmup_steps >= 1, f"warmup_steps must be at least 1, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be 0 or more, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be 0 or more, got {self.grad_clip}"),
            (self.flush_rows >= 1, f"flush_rows must be at least 1, got {self.flush_rows}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)
        resolve_dtype(self.dtype, resolve_device(self.device))  # refused before any model is loaded or built
        if self.data is not None and not Path(self.data).is_file():
            path = Path(self.data)
            raise MoetraceError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")

    @property
    def torch_dtype(self) -> str:
        """The dtype a model is loaded in to train: `auto` is float32."""
        return "float32" if self.dtype == "auto" else self.dtype

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

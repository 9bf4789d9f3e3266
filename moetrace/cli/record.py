"""`moetrace record` (generation) and `moetrace record --train` (training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from moetrace.cli.common import console, handle_errors
from moetrace.cli.options import Device, Dtype, Force, Model, OutDir, Prompts, Seed, TrustRemoteCode
from moetrace.cli.progress import RecordProgress, TrainProgress

TRAIN = "Training (--train)"


@handle_errors
def record_command(
    out: OutDir = Path("trace"),
    model: Model = None,
    prompts: Prompts = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per prompt, greedily; 0 records the prefill only.")
    ] = 32,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Prompts per batch (left-padded), default 8; with --train, sequences per optimizer step, default 16."
        ),
    ] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    trust_remote_code: TrustRemoteCode = False,
    force: Force = False,
    pregate: Annotated[
        bool,
        typer.Option(
            "--pregate",
            help="Also store each token's pre-gating prediction: the next MoE layer's router applied to this layer's output (column pregate_experts).",
        ),
    ] = False,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="Train or fine-tune the model and record the load of every optimizer step.",
            rich_help_panel=TRAIN,
        ),
    ] = False,
    steps: Annotated[int, typer.Option(help="Optimizer steps.", rich_help_panel=TRAIN)] = 500,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Training text: .txt, or .jsonl with a text/prompt field; the demo corpus when omitted.",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence.", rich_help_panel=TRAIN)] = 64,
    lr: Annotated[
        float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay).", rich_help_panel=TRAIN)
    ] = 1e-3,
    aux_loss_coef: Annotated[
        float,
        typer.Option(help="Weight of the router's load-balancing loss; 0 switches it off.", rich_help_panel=TRAIN),
    ] = 0.01,
    grad_accum: Annotated[
        int, typer.Option(help="Micro-batches per optimizer step (their load is summed).", rich_help_panel=TRAIN)
    ] = 1,
    routes_every: Annotated[
        int,
        typer.Option(
            help="Also record the routes of a sample of tokens every this many steps (0: load only).",
            rich_help_panel=TRAIN,
        ),
    ] = 0,
    routes_sample: Annotated[
        int,
        typer.Option(help="Sequences of the batch whose routes are recorded at those steps.", rich_help_panel=TRAIN),
    ] = 4,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Re-initialise the model's weights (seeded) before training: same shape, trained from nothing.",
            rich_help_panel=TRAIN,
        ),
    ] = False,
    save_model: Annotated[
        Path | None, typer.Option(help="Save the trained model and tokenizer to this folder.", rich_help_panel=TRAIN)
    ] = None,
) -> None:
    """Record which experts every token uses: while generating from prompts, or (--train) while training."""
    from moetrace.cli.common import ensure_demo_model
    from moetrace.trace.writer import check_output_dir

    config: Any
    if train:
        from moetrace.train.loop import TrainConfig

        config = TrainConfig(
            model=model, data=None if data is None else str(data), device=device, dtype=dtype,
            trust_remote_code=trust_remote_code, from_scratch=from_scratch, steps=steps,
            batch_size=16 if batch_size is None else batch_size, seq_len=seq_len, lr=lr, aux_loss_coef=aux_loss_coef,
            grad_accum=grad_accum, routes_every=routes_every, routes_sample=routes_sample, seed=seed,
        )  # fmt: skip
    else:
        from moetrace.trace.record import RecordConfig

        config = RecordConfig(
            model=model, prompts=None if prompts is None else str(prompts), max_new_tokens=max_new_tokens,
            batch_size=8 if batch_size is None else batch_size, device=device, dtype=dtype, seed=seed,
            trust_remote_code=trust_remote_code, pregate=pregate,
        )  # fmt: skip
    check_output_dir(out, force)
    if train and save_model is not None:
        check_output_dir(save_model, force)
    if model is None:  # only once every option has been checked: building the demo model takes minutes
        ensure_demo_model()
    trace = _record_training(config, out, save_model, force) if train else _record_generation(config, out, force)
    console.print(f"next: [cyan]moetrace inspect {trace.path}[/cyan]")


def _record_generation(config: Any, out: Path, force: bool) -> Any:
    from moetrace.trace.record import record

    with RecordProgress() as progress:
        trace = record(out=out, config=config, force=force, progress=progress.update)
    run = trace.meta.run
    console.print(
        f"[green]recorded[/green] {run.get('routed_tokens', 0):,} tokens of {run.get('num_sequences')} sequences "
        f"in {run.get('steps')} forward passes ({run.get('seconds')} s) → [bold]{trace.path}[/bold]"
    )
    return trace


def _record_training(config: Any, out: Path, save_model: Path | None, force: bool) -> Any:
    from moetrace.train.record import record_training

    with TrainProgress("training") as progress:
        trace = record_training(out=out, config=config, save_model=save_model, force=force, progress=progress.update)
    run = trace.meta.run
    console.print(
        f"[green]recorded[/green] the load of {run.get('steps')} optimizer steps ({run.get('routed_tokens', 0):,} "
        f"tokens, final loss {run['losses'][-1]:.3f}, {run.get('seconds')} s) → [bold]{trace.path}[/bold]"
    )
    if save_model is not None:
        console.print(f"model → [bold]{save_model}[/bold]")
    return trace

"""`moetrace record`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from moetrace.cli.common import Device, Dtype, Force, Seed, console, handle_errors


@handle_errors
def record_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output trace directory (must not exist or be empty).")
    ] = Path("trace"),
    model: Annotated[str | None, typer.Option(help="Hub id or local folder; the built-in model when omitted.")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help=".txt (one prompt per line) or .jsonl (field prompt or text); built-in prompts when omitted."
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per prompt, greedily; 0 records the prefill only.")
    ] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch (left-padded).")] = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")
    ] = False,
    force: Force = False,
) -> None:
    """Generate from prompts with a transformers MoE model and record every token's experts to a trace."""
    from moetrace.trace.record import record

    with _RecordProgress() as progress:
        trace = record(
            model,
            prompts,
            out,
            force=force,
            progress=progress.update,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
    run = trace.meta.run
    console.print(
        f"[green]recorded[/green] {run.get('routed_tokens', 0):,} tokens of {run.get('num_sequences')} sequences "
        f"in {run.get('steps')} forward passes ({run.get('seconds')} s) → [bold]{trace.path}[/bold]"
    )
    console.print(f"next: [cyan]moetrace inspect {trace.path}[/cyan]")


class _RecordProgress:
    """A rich progress bar: sequences done and tokens routed per second."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("recording"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sequences"),
            TextColumn("[cyan]{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.tokens = 0
        self.started = 0.0

    def __enter__(self) -> _RecordProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def update(self, done: int, total: int, tokens: int) -> None:
        if self.task is None:  # started on the first forward, after the model has loaded
            self.progress.start()
            self.task = self.progress.add_task("record", total=total, rate="")
            self.started = time.perf_counter()
        assert self.task is not None
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, completed=done, rate=f"{self.tokens / elapsed:,.0f} tokens/s")

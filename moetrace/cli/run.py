"""`moetrace run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import console, handle_errors, parse_size, print_json
from moetrace.cli.options import (
    Device,
    Dtype,
    Json,
    LivePolicy,
    Model,
    Pool,
    Predictor,
    PrefetchBudget,
    Prompts,
    Seed,
    TrustRemoteCode,
)


@handle_errors
def run_command(
    model: Model = None,
    prompts: Prompts = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per prompt, greedily.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 1,
    offload: Annotated[
        bool, typer.Option("--offload", help="Keep routed experts in host memory behind a device cache.")
    ] = False,
    policy: LivePolicy = "lru",
    capacity: Annotated[int | None, typer.Option(help="Device slots per layer (or in all with --pool).")] = None,
    gpu_memory: Annotated[
        str | None, typer.Option(help="Instead of --capacity: device memory for experts, e.g. 20GiB.")
    ] = None,
    pool: Pool = False,
    predictor: Predictor = None,
    prefetch_budget: PrefetchBudget = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare", help="Also run with every expert on the device; report both and whether the outputs agree."
        ),
    ] = False,
    record: Annotated[
        Path | None, typer.Option(help="Write this run's own trace here (replay it with `moetrace simulate`).")
    ] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    trust_remote_code: TrustRemoteCode = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing trace at --record.")] = False,
    json_output: Json = False,
) -> None:
    """Generate with a model, optionally with its experts offloaded: tokens/s, hit rate, bytes moved, memory."""
    from moetrace.cli.common import ensure_demo_model
    from moetrace.cli.progress import RecordProgress
    from moetrace.offload.run import RunConfig, run_model
    from moetrace.trace.writer import check_output_dir

    config = RunConfig(
        max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, dtype=dtype, seed=seed, offload=offload,
        policy=policy, capacity=capacity, gpu_memory=parse_size(gpu_memory, "--gpu-memory") if gpu_memory else None,
        pool=pool, prefetch_budget=prefetch_budget, compare=compare,
    )  # fmt: skip
    if record is not None:
        check_output_dir(record, force)
    if model is None:  # only once every option has been checked: building the demo model takes minutes
        ensure_demo_model()
    with RecordProgress("generating") as progress:
        report = run_model(model, prompts, config=config, record=record, predictor=predictor, force=force,
                           progress=progress.update, trust_remote_code=trust_remote_code)  # fmt: skip
    if json_output:
        print_json(report.to_dict())
        return
    from moetrace.cli.tables import run_renderable

    console.print(run_renderable(report))

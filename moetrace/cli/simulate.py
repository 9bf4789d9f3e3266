"""`moetrace simulate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import (
    console,
    err_console,
    handle_errors,
    parse_ints,
    parse_names,
    parse_seconds,
    parse_size,
    print_json,
    print_written,
)
from moetrace.cli.options import (
    Capacity,
    GpuMemory,
    Json,
    Policies,
    Pool,
    Predictor,
    PrefetchBudget,
    RayAddress,
    TraceArg,
)


@handle_errors
def simulate_command(
    trace: TraceArg,
    policy: Policies = "lru,fifo,lfu,belady",
    capacity: Capacity = "8",
    pool: Pool = False,
    gpu_memory: GpuMemory = None,
    order: Annotated[
        str,
        typer.Option(
            help="step: one need-set per (step, layer); token: token by token (decode at batch 1; prefill-only traces)."
        ),
    ] = "step",
    phase: Annotated[str | None, typer.Option(help="Replay only this trace phase (prefill, decode, train).")] = None,
    predictor: Predictor = None,
    prefetch_depth: Annotated[int, typer.Option(help="Prefetch this many layers ahead.")] = 1,
    prefetch_budget: PrefetchBudget = None,
    bandwidth: Annotated[str, typer.Option(help="Host-to-device bandwidth, e.g. 25GB/s.")] = "25GB/s",
    layer_time: Annotated[
        str, typer.Option(help="Compute time of one MoE layer's forward, e.g. 0.5ms (0: not modelled).")
    ] = "0",
    expert_bytes: Annotated[
        int | None, typer.Option(help="Bytes of one expert (default: the trace's meta.json).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Token scheduling (with --order token): batches of this many tokens per round, arrival vs grouped by route."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG: hit rate against capacity per policy (LRU's whole curve).")
    ] = None,
    ray: RayAddress = None,
    json_output: Json = False,
) -> None:
    """Replay a trace against expert-cache policies: hit rates, bytes moved and time per token."""
    from moetrace.cli.progress import StageProgress
    from moetrace.parallel import executor_for
    from moetrace.sim.simulate import SimConfig, capacity_for_memory, simulate
    from moetrace.trace.reader import open_trace

    opened = open_trace(trace)
    if gpu_memory is not None:
        capacities: tuple[int, ...] = (
            capacity_for_memory(opened, parse_size(gpu_memory, "--gpu-memory"), pool, expert_bytes),
        )
        where = "in one pool" if pool else "per layer"
        console.print(f"{gpu_memory} of experts: capacity {capacities[0]:,} {where}")
    else:
        capacities = parse_ints(capacity, "--capacity")
    config = SimConfig(
        policies=parse_names(policy), capacities=capacities, pool=pool, order=order,
        phase=phase, bandwidth=parse_size(bandwidth, "--bandwidth", per_second=True),
        layer_time=parse_seconds(layer_time, "--layer-time"), expert_bytes=expert_bytes, prefetch_depth=prefetch_depth,
        prefetch_budget=prefetch_budget, batch_size=batch_size,
    )  # fmt: skip
    executor = executor_for(ray)
    if executor is not None:
        err_console.print(f"replays on {executor.describe()}", highlight=False)
    with StageProgress("replaying") as progress:
        result = simulate(opened, config, predictor=predictor, progress=progress.update, executor=executor)
    if plot is not None:
        from moetrace.report.plots import plot_hit_rates

        plot_hit_rates(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.cli.tables import simulate_renderable

    console.print(simulate_renderable(result, str(trace)))
    print_written((plot, "figure"))

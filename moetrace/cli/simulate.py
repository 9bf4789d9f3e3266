"""`moetrace simulate`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from moetrace.cli.common import Json, TraceArg, console, handle_errors, print_json, print_written

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str, option: str, per_second: bool = False) -> float:
    """'25GB/s', '8GiB', '17000000' -> a number of bytes (per second)."""
    from moetrace.errors import InvalidArgumentError

    match = re.fullmatch(r"\s*([0-9.]+(?:e[-+]?\d+)?)\s*([kmgt]i?)?b?(/s)?\s*", text.lower())
    if match is None or (match.group(3) and not per_second):
        raise InvalidArgumentError(f"{option} takes a size such as {'25GB/s' if per_second else '8GiB'}, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def parse_seconds(text: str, option: str) -> float:
    from moetrace.errors import InvalidArgumentError

    match = re.fullmatch(r"\s*([0-9.]+(?:e[-+]?\d+)?)\s*(s|ms|us|µs)?\s*", text)
    if match is None:
        raise InvalidArgumentError(f"{option} takes a time such as 1.5ms, got {text!r}")
    return float(match.group(1)) * {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, None: 1}[match.group(2)]


@handle_errors
def simulate_command(
    trace: TraceArg,
    policy: Annotated[
        str,
        typer.Option(
            help="Comma-separated: lru, fifo, lfu, belady, static, and prefetching forms base+source (source: oracle, pregate, markov, mlp)."
        ),
    ] = "lru,fifo,lfu,belady",
    capacity: Annotated[
        str, typer.Option(help="Experts cached per layer (comma-separated for a sweep), or in all with --pool.")
    ] = "8",
    pool: Annotated[
        bool, typer.Option("--pool", help="One cache shared by all layers (capacity counts all of its slots).")
    ] = False,
    gpu_memory: Annotated[
        str | None,
        typer.Option(
            help="Instead of --capacity: GPU memory for experts, e.g. 8GiB, divided by expert_bytes (per layer, or in all with --pool)."
        ),
    ] = None,
    order: Annotated[
        str,
        typer.Option(
            help="step: one need-set per (step, layer); token: token by token (decode at batch 1; prefill-only traces)."
        ),
    ] = "step",
    phase: Annotated[str | None, typer.Option(help="Replay only this trace phase (prefill, decode, train).")] = None,
    predictor: Annotated[
        Path | None,
        typer.Option(help="A path predictor saved by `moetrace predict path --save` (for lru+markov, lru+mlp)."),
    ] = None,
    prefetch_depth: Annotated[int, typer.Option(help="Prefetch this many layers ahead.")] = 1,
    prefetch_budget: Annotated[
        int | None, typer.Option(help="Experts prefetched per layer at most (default: top-k in token order).")
    ] = None,
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
            help="Token scheduling: batches of this many tokens per round, arrival vs grouped by route (token order)."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG: hit rate against capacity per policy (LRU's whole curve).")
    ] = None,
    json_output: Json = False,
) -> None:
    """Replay a trace against expert-cache policies: hit rates, bytes moved and time per token."""
    from moetrace.cli.predict import _ints
    from moetrace.cli.progress import StageProgress
    from moetrace.errors import InvalidArgumentError
    from moetrace.sim.simulate import SimConfig, simulate
    from moetrace.trace.reader import open_trace

    opened = open_trace(trace)
    if gpu_memory is not None:
        size = expert_bytes or opened.meta.model.expert_bytes
        if not size:
            raise InvalidArgumentError(
                "--gpu-memory needs the size of an expert: the trace has none, give --expert-bytes"
            )
        slots = int(parse_size(gpu_memory, "--gpu-memory") // size)
        capacities: tuple[int, ...] = (slots,) if pool else (slots // len(opened.meta.model.moe_layers),)
        console.print(
            f"{gpu_memory} holds {slots:,} experts of {size:,} bytes: capacity {capacities[0]}{' in one pool' if pool else ' per layer'}"
        )
    else:
        capacities = _ints(capacity, "--capacity")
    config = SimConfig(
        policies=tuple(p.strip() for p in policy.split(",") if p.strip()), capacities=capacities, pool=pool, order=order,
        phase=phase, bandwidth=parse_size(bandwidth, "--bandwidth", per_second=True),
        layer_time=parse_seconds(layer_time, "--layer-time"), expert_bytes=expert_bytes, prefetch_depth=prefetch_depth,
        prefetch_budget=prefetch_budget, batch_size=batch_size,
    )  # fmt: skip
    with StageProgress("replaying") as progress:
        result = simulate(opened, config, predictor=predictor, progress=progress.update)
    if plot is not None:
        from moetrace.report.plots import plot_hit_rates

        plot_hit_rates(result, plot)
    if json_output:
        print_json(result.to_dict())
        return
    from moetrace.report.tables import simulate_renderable

    console.print(simulate_renderable(result, str(trace)))
    print_written((plot, "figure"))

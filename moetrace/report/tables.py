"""Rich renderings of library results."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from moetrace.trace.stats import TraceStats


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}%"


def stats_renderable(stats: TraceStats, path: str) -> Any:
    """The summary that `moetrace inspect` prints."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("trace", path + ("" if stats.complete else "  [yellow](incomplete)[/yellow]"))
    head.add_row("model", f"{stats.model} ({stats.model_type})")
    head.add_row("mode", str(stats.mode))
    head.add_row("experts", f"{stats.num_experts} per layer, top-{stats.top_k}")
    head.add_row("layers", f"{len(stats.layers)} MoE layers: {', '.join(str(layer.layer) for layer in stats.layers)}")
    if stats.sequences is not None:
        head.add_row("sequences", f"{stats.sequences:,}")
        head.add_row("tokens", f"{stats.tokens:,}")
    phases = ", ".join(f"{n:,} {p}" for p, n in stats.phases.items())
    head.add_row("steps", f"{stats.steps:,} ({phases})")
    if stats.temporal_locality is not None:
        head.add_row(
            "temporal locality", f"{_pct(stats.temporal_locality)} of a token's experts reused by the next token"
        )
    if stats.inter_layer_predictability is not None:
        head.add_row(
            "inter-layer predictability",
            f"recall@{stats.top_k} {_pct(stats.inter_layer_predictability)} from the previous layer "
            f"(popularity alone: {_pct(stats.inter_layer_popularity)})",
        )

    if stats.load_variance_start is not None and stats.load_variance_end is not None:
        settled = stats.load_variance_end / stats.load_variance_start if stats.load_variance_start else float("nan")
        head.add_row(
            "load stability",
            f"windowed variance of expert shares (window {stats.variance_window} steps): first tenth "
            f"{stats.load_variance_start:.2e}, last fifth {stats.load_variance_end:.2e} ({settled:.2f}×)",
        )

    table = Table(title="per layer", title_justify="left", header_style="bold")
    for name, justify in [
        ("layer", "right"),
        ("routings", "right"),
        ("max/mean", "right"),
        ("cv", "right"),
        ("entropy", "right"),
        ("top 10%", "right"),
        ("hottest experts (share)", "left"),
        ("locality", "right"),
        ("→ next layer", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for layer in stats.layers:
        hottest = ", ".join(f"{e} ({100 * s:.1f}%)" for e, s in layer.hottest)
        table.add_row(
            str(layer.layer),
            f"{layer.routings:,}",
            _fmt(layer.imbalance, 2),
            _fmt(layer.cv, 2),
            _fmt(layer.entropy, 3),
            _pct(layer.top10_share),
            hottest,
            _pct(layer.temporal_locality),
            _pct(layer.next_layer_recall),
        )
    note = Text(
        "max/mean: load imbalance; entropy: normalised (1 = uniform); top 10%: share of routings to the busiest "
        "tenth of experts; locality: share of a token's experts the next token reuses; → next layer: in-sample "
        "recall of the next layer's experts from this layer's (co-occurrence table).",
        style="dim",
    )
    return Group(head, Text(""), table, note)


def load_backtest_renderable(result: Any, path: str) -> Any:
    """Method × horizon tables of a load backtest, one per phase (stable, transient, all)."""
    series = result.series
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row(
        "trace", f"{path} ({series.length:,} steps × {len(series.layers)} layers × {series.shares.shape[2]} experts)"
    )
    stable_step = series.steps[min(result.phases.stable_start, series.length - 1)]
    head.add_row("phases", f"stable from step {stable_step}: {result.phases.describe()}")
    origins = ", ".join(f"H={h}: {len(o)}" for h, o in result.origins.items())
    head.add_row("origins", origins)
    parts: list[Any] = [head]
    horizons = sorted({r["horizon"] for r in result.results})
    names = {m: f.describe() for m, f in result.fitted.items()}
    phases_present = {r["phase"] for r in result.results} - {"all"}
    for phase in ("stable", "transient", "all"):
        rows = [r for r in result.results if r["phase"] == phase]
        if not rows or (phase == "all" and len(phases_present) < 2):
            continue
        table = Table(title=f"{phase} phase: mae (percentage points) / tvd", title_justify="left", header_style="bold")
        table.add_column("method")
        for h in horizons:
            table.add_column(f"H={h:,}", justify="right")
        best = {h: min((r["mae_pp"] for r in rows if r["horizon"] == h), default=None) for h in horizons}
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = []
            for h in horizons:
                row = next((r for r in rows if r["method"] == method and r["horizon"] == h), None)
                if row is None:
                    cells.append("–")
                    continue
                text = f"{row['mae_pp']:.3f} / {row['tvd']:.3f}"
                cells.append(f"[bold green]{text}[/bold green]" if row["mae_pp"] == best[h] else text)
            table.add_row(names.get(method, method), *cells)
        parts += [Text(""), table]
    for note in dict.fromkeys(result.notes):
        parts.append(Text(f"note: {note}", style="yellow"))
    return Group(*parts)


def path_renderable(result: Any, path: str) -> Any:
    """Method × lookahead recall@k of a path-prediction evaluation."""
    import numpy as np

    train, test = result.train, result.test
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("trace", f"{path} ({len(test.layers)} MoE layers × {test.num_experts} experts, top-{test.top_k})")
    head.add_row(
        "split",
        f"train {train.tokens:,} tokens of {len(np.unique(train.seq_id)):,} sequences; test {test.tokens:,} tokens "
        f"of {len(np.unique(test.seq_id)):,} unseen sequences",
    )
    lookaheads = sorted({r["lookahead"] for r in result.results})
    table = Table(title=f"recall@{test.top_k} (µs per prediction)", title_justify="left", header_style="bold")
    table.add_column("method")
    for d in lookaheads:
        table.add_column(f"{d} layer{'s' if d > 1 else ''} ahead", justify="right")
    best = {d: max((r["recall"] for r in result.results if r["lookahead"] == d), default=None) for d in lookaheads}
    for method in dict.fromkeys(r["method"] for r in result.results):
        cells = []
        for d in lookaheads:
            row = next((r for r in result.results if r["method"] == method and r["lookahead"] == d), None)
            if row is None:
                cells.append("–")
                continue
            text = f"{row['recall']:.3f} ({row['us_per_prediction']:.1f} µs)"
            cells.append(f"[bold green]{text}[/bold green]" if row["recall"] == best[d] else text)
        table.add_row(method, *cells)
    parts: list[Any] = [head, Text(""), table]
    for note in dict.fromkeys(result.notes):
        parts.append(Text(f"note: {note}", style="yellow"))
    parts.append(
        Text(
            "recall@k: the share of a token's k experts at the target layer that the k predicted experts hold, "
            "averaged over test tokens and source layers; µs: prediction time per token and layer on this machine.",
            style="dim",
        )
    )
    return Group(*parts)


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return str(value)


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def simulate_renderable(result: Any, path: str) -> Any:
    """Policy × capacity table of a replay, with the cost model's times and the baselines."""
    stream, config = result.stream, result.config
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row(
        "trace", f"{path} ({len(stream.layers)} MoE layers × {stream.num_experts} experts, top-{stream.top_k})"
    )
    head.add_row(
        "stream",
        f"{stream.order} order: {stream.requests:,} requests, {stream.accesses:,} expert accesses, {stream.tokens:,} tokens",
    )
    cost = f"{_bytes(config.bandwidth)}/s host→device, layer compute {_time(config.layer_time)}"
    head.add_row("cost model", f"{cost}, expert {_bytes(result.expert_bytes or 0)}, one copy engine")
    rows = result.results
    if rows:
        head.add_row("baselines", f"all experts on the GPU {_time(rows[0]['all_in_gpu_time_per_token_s'])} per token; "
                     f"no cache {_time(rows[0]['no_cache_time_per_token_s'])} per token")  # fmt: skip
    table = Table(
        title="per policy and capacity" + (" (one pool)" if config.pool else " (per layer)"),
        title_justify="left",
        header_style="bold",
    )
    for name, justify in [("policy", "left"), ("capacity", "right"), ("hit rate", "right"), ("misses", "right"),
                          ("loads", "right"), ("bytes", "right"), ("stall", "right"), ("time/token", "right"),
                          ("prefetch acc.", "right"), ("wasted", "right")]:  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    best = {c: max(r["hit_rate"] for r in rows if r["capacity"] == c) for c in {r["capacity"] for r in rows}}
    for r in rows:
        rate = f"{100 * r['hit_rate']:.2f}%"
        table.add_row(
            r["policy"], str(r["capacity"]), f"[bold green]{rate}[/bold green]" if r["hit_rate"] == best[r["capacity"]] else rate,
            f"{r['misses']:,}", f"{r['loads']:,}", _bytes(r["bytes"]), _time(r["stall_s"]), _time(r["time_per_token_s"]),
            f"{100 * r['prefetch_accuracy']:.1f}%" if "prefetch_accuracy" in r else "–",
            f"{r['wasted_loads']:,}" if "wasted_loads" in r else "–",
        )  # fmt: skip
    parts: list[Any] = [head, Text(""), table]
    if result.scheduling:
        sched = Table(
            title=f"token scheduling, batches of {config.batch_size} tokens per round",
            title_justify="left",
            header_style="bold",
        )
        for name in ("schedule", "policy", "capacity", "experts per forward·layer", "hit rate", "loads"):
            sched.add_column(name, justify="left" if name in ("schedule", "policy") else "right")
        for r in result.scheduling:
            sched.add_row(r["schedule"], r["policy"], str(r["capacity"]), f"{r['experts_per_forward_layer']:.2f}",
                          f"{100 * r['hit_rate']:.2f}%", f"{r['loads']:,}")  # fmt: skip
        parts += [Text(""), sched]
    for note in result.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    parts.append(Text("hit: the expert was resident when its layer started; loads count demand misses and prefetches; "
                      "stall: time layers waited for transfers.", style="dim"))  # fmt: skip
    return Group(*parts)


def run_renderable(report: Any) -> Any:
    """What `moetrace run` did: throughput, cache, memory, and the baseline when asked."""
    data = report.to_dict()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    config = report.config
    mode = (f"offloaded: {config['policy']}, {report.capacity} slots {'in one pool' if config['pool'] else 'per layer'}"
            if config["offload"] else "every expert on the device")  # fmt: skip
    grid.add_row("run", f"{len(report.generated)} prompts on {report.device}, {mode}")
    grid.add_row("prefill", f"{report.prefill_tokens:,} tokens, {data['prefill_tokens_per_s']:,.1f} tokens/s")
    grid.add_row("decode", f"{report.decode_tokens:,} tokens, {data['decode_tokens_per_s']:,.1f} tokens/s")
    if config["offload"]:
        grid.add_row("cache", f"hit rate {100 * report.hit_rate:.2f}% ({report.hits:,} hits, {report.misses:,} misses), "
                     f"{report.loads:,} loads ({_prefetched(report)}), {_bytes(report.bytes)} moved, "
                     f"stall {_time(report.stall_s)}")  # fmt: skip
    if report.peak_memory_bytes is not None:
        grid.add_row("peak memory", _bytes(report.peak_memory_bytes))
    if report.baseline is not None:
        base = report.baseline
        memory = f", peak memory {_bytes(base['peak_memory_bytes'])}" if base.get("peak_memory_bytes") else ""
        agree = "[green]identical outputs[/green]" if base["identical"] else "[red]outputs differ[/red]"
        grid.add_row("all on device", f"{base['tokens_per_s']:,.1f} tokens/s{memory}; {agree}")
    if report.trace:
        replay = (f" (replay: moetrace simulate {report.trace} --order step --policy {config['policy'].split('+')[0]} "
                  f"--capacity {report.capacity}{' --pool' if config['pool'] else ''})" if config["offload"] else "")  # fmt: skip
        grid.add_row("trace", f"{report.trace}{replay}")
    parts: list[Any] = [grid]
    shown = [(i, text) for i, text in enumerate(report.text) if text.strip()][:3]
    for i, text in shown:
        parts.append(Text(f"[{i}] {text!r}", style="dim"))
    return Group(*parts)


def _prefetched(report: Any) -> str:
    if not report.prefetch_loads:
        return "none prefetched"
    return (f"{report.prefetch_loads:,} prefetched, {report.useful_prefetches / report.prefetch_loads:.0%} of them used")  # fmt: skip

"""Rich renderings of library results: what the commands print.

Tables are drawn to stay legible at 80 columns when piped: light rules instead of boxes, short
headers, and numbers that never wrap.
"""

from __future__ import annotations

from typing import Any

from rich import box
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


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table with light rules; every column but the last is kept on one line."""
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 0, 0, 1),
    )
    for i, (name, justify) in enumerate(columns):
        table.add_column(name, justify=justify, no_wrap=i < len(columns) - 1 or justify == "right")  # type: ignore[arg-type]
    return table


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

    table = _table(
        "per layer",
        [("layer", "right"), ("routings", "right"), ("max/mean", "right"), ("cv", "right"), ("entropy", "right"),
         ("top 10%", "right"), ("locality", "right"), ("→ next", "right")],
    )  # fmt: skip
    hot = _table("hottest experts (share of routings)", [("layer", "right"), ("experts", "left")])
    for layer in stats.layers:
        table.add_row(
            str(layer.layer),
            f"{layer.routings:,}",
            _fmt(layer.imbalance, 2),
            _fmt(layer.cv, 2),
            _fmt(layer.entropy, 3),
            _pct(layer.top10_share),
            _pct(layer.temporal_locality),
            _pct(layer.next_layer_recall),
        )
        hot.add_row(str(layer.layer), "  ".join(f"{e}: {100 * s:.1f}%" for e, s in layer.hottest))
    note = Text(
        "max/mean: load imbalance; entropy: normalised (1 = uniform); top 10%: share of routings to the busiest "
        "tenth of experts; locality: share of a token's experts the next token reuses; → next: in-sample "
        "recall of the next layer's experts from this layer's (co-occurrence table).",
        style="dim",
    )
    parts: list[Any] = [head, Text(""), table, Text(""), note]
    if any(layer.hottest for layer in stats.layers):
        parts += [Text(""), hot]
    return Group(*parts)


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
        table = _table(
            f"{phase} phase: mae (percentage points) / tvd",
            [("method", "left")] + [(f"H={h:,}", "right") for h in horizons],
        )
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
    table = _table(
        f"recall@{test.top_k} (µs per prediction)",
        [("method", "left")] + [(f"{d} layer{'s' if d > 1 else ''} ahead", "right") for d in lookaheads],
    )
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
    parts.append(Text(""))
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
    table = _table(
        "per policy and capacity" + (" (one pool)" if config.pool else " (per layer)"),
        [("policy", "left"), ("capacity", "right"), ("hit rate", "right"), ("misses", "right"), ("loads", "right"),
         ("moved", "right"), ("stall", "right"), ("per token", "right")],
    )  # fmt: skip
    deployable = [r for r in rows if not r.get("bound")]
    fastest = {
        c: min(r["time_per_token_s"] for r in deployable if r["capacity"] == c)
        for c in {r["capacity"] for r in deployable}
    }
    for r in rows:
        per_token = _time(r["time_per_token_s"])
        if not r.get("bound") and r["time_per_token_s"] == fastest[r["capacity"]]:
            per_token = f"[bold green]{per_token}[/bold green]"
        table.add_row(
            r["policy"] + (" *" if r.get("bound") else ""), str(r["capacity"]), f"{100 * r['hit_rate']:.2f}%",
            f"{r['misses']:,}", f"{r['loads']:,}", _bytes(r["bytes"]), _time(r["stall_s"]), per_token,
        )  # fmt: skip
    parts: list[Any] = [head, Text(""), table]
    if len(deployable) < len(rows):
        parts.append(Text("* a bound: it knows the future; green: the fastest policy that can be deployed"))
    prefetching = [r for r in rows if "prefetch_accuracy" in r]
    if prefetching:
        ahead = _table("prefetching", [("policy", "left"), ("capacity", "right"), ("accuracy", "right"),
                                       ("wasted loads", "right")])  # fmt: skip
        for r in prefetching:
            ahead.add_row(r["policy"], str(r["capacity"]), f"{100 * r['prefetch_accuracy']:.1f}%",
                          f"{r['wasted_loads']:,}" if "wasted_loads" in r else "–")  # fmt: skip
        parts += [Text(""), ahead]
    if result.scheduling:
        sched = _table(
            f"token scheduling, batches of {config.batch_size} tokens per round",
            [("schedule", "left"), ("policy", "left"), ("capacity", "right"), ("experts/forward", "right"),
             ("hit rate", "right"), ("loads", "right")],
        )  # fmt: skip
        for r in result.scheduling:
            sched.add_row(r["schedule"], r["policy"], str(r["capacity"]), f"{r['experts_per_forward_layer']:.2f}",
                          f"{100 * r['hit_rate']:.2f}%", f"{r['loads']:,}")  # fmt: skip
        parts += [Text(""), sched]
    for note in result.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    parts.append(Text(""))
    parts.append(Text("hit: the expert was resident when its layer started; loads count demand misses and prefetches; "
                      "moved: bytes copied to the device; stall: time layers waited for transfers; per token: "
                      "modelled time per token; experts/forward: distinct experts per forward and layer.", style="dim"))  # fmt: skip
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

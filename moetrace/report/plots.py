"""Matplotlib figures. matplotlib is imported here only, with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moetrace.trace.reader import DenseLoad, Trace


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` rows (fewer at the start) of a (steps, ...) array."""
    if window <= 1:
        return values
    cumsum = np.cumsum(values, axis=0)
    out = cumsum.copy()
    out[window:] = cumsum[window:] - cumsum[:-window]
    counts = np.minimum(np.arange(1, len(values) + 1), window).reshape(-1, *([1] * (values.ndim - 1)))
    return out / counts


def plot_trace_load(trace: Trace, path: str | Path, title: str = "", max_rows: int = 300) -> Path:
    """`plot_load` of a trace with its steps summed in groups of consecutive steps, at most `max_rows`
    groups: DuckDB sums the groups over the parts in place, so the per-step array is never built."""
    steps = trace.load_steps()
    per_row = max(1, -(-len(steps.steps) // max_rows))
    load = trace.dense_load(steps=steps, row_of_step=np.arange(len(steps.steps)) // per_row)
    return plot_load(load, path, title=title)


def plot_load(load: DenseLoad, path: str | Path, title: str = "", hottest: int = 6) -> Path:
    """Heatmap of load share per layer × expert, the busiest experts' share over steps, imbalance over steps.

    A row of `load` may sum several steps (`plot_trace_load`); shares and imbalance are then those of
    the summed load."""
    plt = _pyplot()
    shares = load.shares()
    totals = load.tokens.sum(axis=0)
    heat = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1)
    steps = load.steps
    grouped = int(load.step_counts.max(initial=1))
    per = "step" if grouped == 1 else f"{grouped} steps"
    window = max(1, len(steps) // 100)
    smoothing = f" (mean over {window} {'steps' if grouped == 1 else 'groups'})" if window > 1 else ""

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), gridspec_kw={"height_ratios": [1.2, 1, 1]})
    image = axes[0].imshow(heat, aspect="auto", cmap="viridis", interpolation="nearest")
    axes[0].set_yticks(range(len(load.layers)), [str(layer) for layer in load.layers])
    axes[0].set_xlabel("expert")
    axes[0].set_ylabel("layer")
    axes[0].set_title("share of each layer's routings per expert")
    fig.colorbar(image, ax=axes[0], fraction=0.025)

    imbalance_by_layer = heat.max(axis=1) * heat.shape[1]
    layer = int(np.argmax(imbalance_by_layer))
    busiest = np.argsort(-heat[layer])[:hottest]
    smooth = rolling_mean(shares[:, layer, :], window)
    for expert in busiest:
        axes[1].plot(steps, smooth[:, expert], lw=1, label=f"expert {expert}")
    axes[1].set_title(f"layer {load.layers[layer]}: share of its busiest experts per {per}{smoothing}")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("share")
    axes[1].legend(fontsize=7, ncol=3)

    per_step = load.tokens.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        imbalance = np.where(
            per_step[..., 0] > 0, load.tokens.max(axis=2) / (per_step[..., 0] / load.tokens.shape[2]), np.nan
        )
    smooth_imbalance = rolling_mean(np.nan_to_num(imbalance, nan=1.0), window)
    for i, layer_id in enumerate(load.layers):
        axes[2].plot(steps, smooth_imbalance[:, i], lw=1, label=f"layer {layer_id}")
    axes[2].set_title(f"load imbalance (max/mean) per {per}{smoothing}")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("max / mean")
    if len(load.layers) <= 12:
        axes[2].legend(fontsize=7, ncol=4)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_load_backtest(result, path: str | Path, experts: int = 3) -> Path:  # type: ignore[no-untyped-def]
    """Actual vs forecast shares of the hottest experts at the last origin, and error vs steps ahead."""
    plt = _pyplot()
    series = result.series
    horizon = max(result.origins)
    origin = int(result.origins[horizon][-1])
    mean_share = series.shares.mean(axis=0)
    layer = int(np.argmax(mean_share.max(axis=1)))
    hottest = np.argsort(-mean_share[layer])[:experts]
    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    before = max(0, origin - 2 * horizon)
    rows = np.arange(before, origin + horizon)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, expert in enumerate(hottest):
        axes[0].plot(series.steps[rows], series.shares[rows, layer, expert], color=colors[i % len(colors)], lw=0.8, alpha=0.6,
                     label=f"expert {expert} (actual)")  # fmt: skip
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    for j, (method, _) in enumerate(result.fitted.items()):
        predicted = result.forecasts.get((method, horizon))
        if predicted is None:
            continue
        for i, expert in enumerate(hottest):
            axes[0].plot(series.steps[origin : origin + horizon], predicted[-1, :, layer, expert], color=colors[i % len(colors)],
                         lw=1.6, ls=styles[j % len(styles)], label=method if i == 0 else None)  # fmt: skip
    axes[0].axvline(series.steps[origin], color="grey", lw=0.8)
    axes[0].set_title(
        f"layer {series.layers[layer]}: hottest experts, forecasts from step {series.steps[origin]} (H={horizon})"
    )
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=7, ncol=3)
    for method in result.fitted:
        errors = result.error_by_step.get((method, horizon))
        if errors is not None:
            axes[1].plot(np.arange(1, len(errors) + 1), errors, lw=1, label=method)
    axes[1].set_title(f"error vs steps ahead (mean over {len(result.origins[horizon])} origins)")
    axes[1].set_xlabel("steps ahead")
    axes[1].set_ylabel("mae (percentage points)")
    axes[1].legend(fontsize=8)
    return _save(fig, path)


def plot_path_recall(result, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """Recall@k per source layer, a line per (method, lookahead)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    layers = result.test.layers
    for row in result.results:
        d = row["lookahead"]
        targets = [layers[i + d] for i in range(len(row["per_layer"]))]
        ax.plot(targets, row["per_layer"], marker="o", ms=3, lw=1, label=f"{row['method']}, {d} ahead")
    ax.set_xlabel("target layer")
    ax.set_ylabel(f"recall@{result.test.top_k}")
    ax.set_ylim(0, 1)
    ax.set_title("path prediction on unseen sequences")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_hit_rates(result, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """Hit rate against capacity, a line per policy; LRU's whole curve from its stack distances."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    if result.lru_curve is not None:
        capacities, rates = result.lru_curve
        ax.plot(capacities, rates, color="grey", lw=1, label="lru (every capacity)")
    for policy in dict.fromkeys(r["policy"] for r in result.results):
        rows = sorted((r for r in result.results if r["policy"] == policy), key=lambda r: r["capacity"])
        ax.plot([r["capacity"] for r in rows], [r["hit_rate"] for r in rows], marker="o", ms=4, label=policy)
    ax.set_xlabel("capacity (experts" + (" in the pool)" if result.config.pool else " per layer)"))
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"expert cache hit rate ({result.stream.order} order)")
    ax.legend(fontsize=8)
    return _save(fig, path)

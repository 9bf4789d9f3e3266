"""Matplotlib figures. matplotlib is imported here only, with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moetrace.trace.reader import DenseLoad


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` rows (fewer at the start) of a (steps, ...) array."""
    if window <= 1:
        return values
    cumsum = np.cumsum(values, axis=0)
    out = cumsum.copy()
    out[window:] = cumsum[window:] - cumsum[:-window]
    counts = np.minimum(np.arange(1, len(values) + 1), window).reshape(-1, *([1] * (values.ndim - 1)))
    return out / counts


def plot_load(load: DenseLoad, path: str | Path, title: str = "", hottest: int = 6) -> Path:
    """Heatmap of load share per layer × expert, the busiest experts' share over steps, imbalance over steps."""
    plt = _pyplot()
    shares = load.shares()
    totals = load.tokens.sum(axis=0)
    heat = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1)
    steps = load.steps
    window = max(1, len(steps) // 100)
    smoothing = f" (mean over {window} steps)" if window > 1 else ""

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
    axes[1].set_title(f"layer {load.layers[layer]}: share of its busiest experts per step{smoothing}")
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
    axes[2].set_title(f"load imbalance (max/mean) per step{smoothing}")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("max / mean")
    if len(load.layers) <= 12:
        axes[2].legend(fontsize=7, ncol=4)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

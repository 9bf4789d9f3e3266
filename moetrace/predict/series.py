"""Load share series from a trace, bucketing of tiny decode steps, and transient/stable phase detection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.trace.reader import LoadSteps, Trace


@dataclass(frozen=True)
class LoadSeries:
    """Expert shares per step: `shares[t, l, e]` = tokens of expert e / tokens of layer l at step t."""

    steps: np.ndarray
    """(T,) the trace step (or the first step of the bucket) of each row."""
    shares: np.ndarray
    """(T, L, E) float64; every (t, l) row sums to 1."""
    layers: tuple[int, ...]
    tokens: np.ndarray
    """(T, L) token-routings behind each row (the weight of a share)."""

    @property
    def length(self) -> int:
        return len(self.steps)


BYTES_PER_CELL = 12
"""What `load_series` holds per (row, layer, expert) at its peak: int32 counts and float64 shares."""


def load_series(trace: Trace, phase: str | None = None, bucket: int | None = None) -> LoadSeries:
    """The trace's load as share series; `bucket` sums consecutive steps until N tokens per layer are routed.

    The steps are grouped before the load is summed (DuckDB sums it per group), so the per-step
    array is never built when `bucket` is given. A series that would take more than half of the
    memory available is refused before the load is read."""
    if bucket is not None and bucket < 1:
        raise InvalidArgumentError(f"--bucket must be at least 1 token, got {bucket}")
    steps = trace.load_steps(phase)
    if len(steps.steps) == 0:
        raise TraceFormatError(f"trace {trace.path} holds no load{f' in phase {phase}' if phase else ''}")
    rows = None if bucket is None else bucket_rows(steps.first_layer, bucket * trace.meta.model.top_k)
    check_fits(trace, steps, rows, bucket)
    dense = trace.dense_load(phase, steps=steps, row_of_step=rows)
    counts = dense.tokens  # ours alone: filled in place
    totals = counts.sum(axis=2)
    if (totals == 0).any():
        # a step where a layer routed nothing (e.g. an MoE layer skipped): carry the previous shares
        _fill_empty(counts, totals)
        totals = counts.sum(axis=2)
    shares = np.empty(counts.shape)
    np.divide(counts, totals[..., None], out=shares)  # in buffered chunks: no float64 copy of the counts
    return LoadSeries(steps=dense.steps, shares=shares, layers=dense.layers, tokens=totals.astype(np.float64))


def bucket_rows(first_layer: np.ndarray, routings: int) -> np.ndarray:
    """(S,) the row of each step when consecutive steps are grouped: a row closes at the first step at
    which the row's first layer (`first_layer`: (S,) its routings per step) holds at least `routings`
    routings; the last row may hold fewer.

    Where a row that starts at each step would close is one searchsorted over the running sums; the
    walk from row start to row start is then one Python step per row, not per step."""
    ends = np.cumsum(first_layer, dtype=np.int64)  # routings up to and including each step
    closes = np.searchsorted(ends, ends - first_layer + routings, side="left").tolist()
    starts = np.zeros(len(first_layer), np.int64)
    start = closes[0] + 1 if len(closes) else 0
    while start < len(closes):
        starts[start] = 1
        start = closes[start] + 1
    return np.cumsum(starts)


def check_fits(trace: Trace, steps: LoadSteps, rows: np.ndarray | None, bucket: int | None) -> None:
    """Refuse a series of `rows` (one per step of `steps` when None) that would take more than half of
    the memory available, suggesting a `--bucket` that fits."""
    model = trace.meta.model
    layers, experts = len(model.moe_layers), model.num_experts
    length = len(steps.steps) if rows is None else int(rows[-1]) + 1
    needed = length * layers * experts * BYTES_PER_CELL
    available = available_memory()
    if needed <= available // 2:
        return
    what = f"{length:,} steps" if bucket is None else f"{length:,} buckets of {bucket:,} tokens"
    fitting = available // 2 // (layers * experts * BYTES_PER_CELL)  # rows that fit
    # a row holds at least `bucket` × top_k routings of the first layer, but for the last
    tokens = -(-int(steps.first_layer.sum()) // (model.top_k * max(fitting - 1, 1)))
    hint = f", e.g. --bucket {1 << max(tokens - 1, 0).bit_length()}" if fitting > 1 else ""
    raise InvalidArgumentError(
        f"the load series would take {_size(needed)} ({what} × {layers} layers × {experts} experts), "
        f"more than half of the {_size(available)} of memory available; "
        f"group steps with --bucket N (tokens per row){hint}"
    )


def available_memory() -> int:
    """Bytes of memory this process may still take: /proc/meminfo's MemAvailable (the physical
    memory where there is none), less where a cgroup limit leaves less."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit.isdigit() and used.isdigit():
            available = min(available, int(limit) - int(used))
    except OSError:
        pass
    return available


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _fill_empty(counts: np.ndarray, totals: np.ndarray) -> None:
    """Rows where a layer routed nothing take that layer's previous row (ones before any), in place."""
    for t, layer in zip(*np.nonzero(totals == 0)):
        counts[t, layer] = counts[t - 1, layer] if t > 0 else 1  # uniform when nothing came before


@dataclass(frozen=True)
class Phases:
    """Where the load settles: the stable phase is the suffix whose windowed variance and range stay low."""

    stable_start: int
    """Row index of the first step of the stable phase (== length when there is none)."""
    window: int
    variance: np.ndarray
    """(T,) windowed variance, averaged over all series (NaN before the first full window)."""
    spread: np.ndarray
    """(T,) windowed range (max − min), averaged over all series."""
    variance_threshold: float
    spread_threshold: float

    def phase_of(self, row: int) -> str:
        return "stable" if row >= self.stable_start else "transient"

    def describe(self) -> str:
        return (
            f"windowed variance ≤ {self.variance_threshold:.2e} and range ≤ {self.spread_threshold:.3f} in 95% of "
            f"the {self.window}-step windows from there on (thresholds: 3× their medians over the last fifth)"
        )


def detect_phases(shares: np.ndarray, window: int | None = None, factor: float = 3.0) -> Phases:
    """Split a (T, L, E) share series into a transient and a stable phase.

    The windowed variance and range of every series are averaged over series; the thresholds are
    `factor` × their medians over the last fifth of the steps (where training load has settled, if
    it ever does). The stable phase is the longest suffix of steps in which at most 5% of the
    windows exceed a threshold, starting at a window that does not.
    """
    length = len(shares)
    window = window or max(5, length // 100)
    flat = shares.reshape(length, -1)
    variance = np.full(length, np.nan)
    spread = np.full(length, np.nan)
    if length >= window:
        variance[window - 1 :], spread[window - 1 :] = _windowed_means(flat, window)
    tail = slice(length - max(window, length // 5), length)
    variance_threshold = factor * float(np.nanmedian(variance[tail])) if length >= window else np.inf
    spread_threshold = factor * float(np.nanmedian(spread[tail])) if length >= window else np.inf
    exceeds = ~((variance <= variance_threshold) & (spread <= spread_threshold))  # NaN (no full window) exceeds
    # the stable phase: the longest suffix in which at most 5% of the windows exceed a threshold
    suffix_share = np.cumsum(exceeds[::-1])[::-1] / np.arange(length, 0, -1)
    calm = np.flatnonzero((suffix_share <= 0.05) & ~exceeds)
    stable_start = int(calm[0]) if len(calm) else length
    return Phases(stable_start, window, variance, spread, variance_threshold, spread_threshold)


def _windowed_means(flat: np.ndarray, window: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each window of `window` consecutive rows of (T, series): the variance and the range of each
    series within it, averaged over series. A few series at a time, in O(T) memory per series: running
    sums give the variance, scipy's running max and min the range."""
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    length, series = flat.shape
    variance = np.zeros(length - window + 1)
    spread = np.zeros(length - window + 1)
    shift = (window - 1) // 2  # scipy centres its windows; this makes each end at its row
    for first in range(0, series, block):
        x = flat[:, first : first + block].astype(np.float64)
        x = x - x.mean(axis=0)  # centred: the running sums lose no precision
        sums = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
        squares = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x * x]), axis=0)
        total = sums[window:] - sums[:-window]
        total_sq = squares[window:] - squares[:-window]
        variance += np.maximum(total_sq / window - (total / window) ** 2, 0.0).sum(axis=1)
        high = maximum_filter1d(x, window, axis=0, origin=shift)[window - 1 :]
        low = minimum_filter1d(x, window, axis=0, origin=shift)[window - 1 :]
        spread += (high - low).sum(axis=1)
    return variance / series, spread / series

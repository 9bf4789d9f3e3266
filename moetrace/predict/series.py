"""Load share series from a trace, bucketing of tiny decode steps, and transient/stable phase detection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.trace.reader import Trace


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


def load_series(trace: Trace, phase: str | None = None, bucket: int | None = None) -> LoadSeries:
    """The trace's load as share series; `bucket` sums consecutive steps until N tokens per layer are routed."""
    if bucket is not None and bucket < 1:
        raise InvalidArgumentError(f"--bucket must be at least 1 token, got {bucket}")
    dense = trace.dense_load(phase)
    if len(dense.steps) == 0:
        raise TraceFormatError(f"trace {trace.path} holds no load{f' in phase {phase}' if phase else ''}")
    counts = dense.tokens.astype(np.float64)
    steps = dense.steps
    if bucket is not None:
        counts, steps = _bucket(counts, steps, bucket * trace.meta.model.top_k)
    totals = counts.sum(axis=2)
    if (totals == 0).any():
        # a step where a layer routed nothing (e.g. an MoE layer skipped): carry the previous shares
        counts = _fill_empty(counts, totals)
        totals = counts.sum(axis=2)
    return LoadSeries(steps=steps, shares=counts / totals[..., None], layers=dense.layers, tokens=totals)


def _bucket(counts: np.ndarray, steps: np.ndarray, routings: int) -> tuple[np.ndarray, np.ndarray]:
    """Group consecutive steps: a bucket closes once its first layer holds at least `routings` routings."""
    per_step = counts[:, 0, :].sum(axis=1)
    bucket_of = np.empty(len(per_step), np.int64)
    bucket, filled = 0, 0.0
    for i, routed in enumerate(per_step):
        bucket_of[i] = bucket
        filled += routed
        if filled >= routings:
            bucket, filled = bucket + 1, 0.0
    n = int(bucket_of[-1]) + 1
    out = np.zeros((n, *counts.shape[1:]))
    np.add.at(out, bucket_of, counts)
    first = np.full(n, -1, np.int64)
    first[bucket_of[::-1]] = steps[::-1]
    return out, first


def _fill_empty(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    counts = counts.copy()
    for t, layer in zip(*np.nonzero(totals == 0)):
        counts[t, layer] = counts[t - 1, layer] if t > 0 else 1.0  # uniform when nothing came before
    return counts


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

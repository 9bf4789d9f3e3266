"""Forecast error metrics on expert shares (DESIGN.md "Load forecasting")."""

from __future__ import annotations

import numpy as np


def mae_pp(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean |p̂ − p| in percentage points, over every step, layer and expert."""
    return float(np.abs(predicted - actual).mean() * 100)


def tvd(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Total variation distance ½ Σ_e |p̂ − p|, averaged over steps and layers: the share of a layer's
    routings placed on the wrong expert."""
    return float(0.5 * np.abs(predicted - actual).sum(axis=-1).mean())


def error_by_step(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """mae_pp at each step ahead: (..., H, L, E) -> (H,)."""
    diff = np.abs(predicted - actual) * 100
    return diff.reshape(-1, *diff.shape[-3:]).mean(axis=(0, 2, 3))


def normalise(forecast: np.ndarray) -> np.ndarray:
    """Clip at 0 and renormalise every (step, layer) to sum to 1 (uniform where everything was clipped)."""
    clipped = np.clip(forecast, 0.0, None)
    totals = clipped.sum(axis=-1, keepdims=True)
    uniform = np.full_like(clipped, 1.0 / clipped.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, clipped / np.where(totals > 0, totals, 1.0), uniform)

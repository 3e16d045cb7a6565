"""Fitting the block's input side from data: per-feature input scales and distributive thresholds.

DWN's distributive thermometer puts thresholds at equal-frequency quantiles of the training data, so
every thermometer bit splits the data as evenly as the integer grid allows.
"""

from __future__ import annotations

import numpy as np
from quweit.custom_ops.params import MAX_INPUT_SCALE, input_range

#: Quantile of |x| mapped to the largest quantized value: rare outliers saturate instead of
#: costing every other value its resolution.
RANGE_QUANTILE = 0.999


def fit_input_scale(x: np.ndarray, input_bits: int, *, range_quantile: float = RANGE_QUANTILE) -> np.ndarray:
    """Per-feature `input_scale` (float32 `[D_in]`) mapping the data's range onto `[qmin, qmax]`."""
    x = np.asarray(x, dtype=np.float32)
    qmax = input_range(input_bits)[1]
    finite = np.where(np.isfinite(x), np.abs(x), 0.0)
    span = np.quantile(finite, range_quantile, axis=0) if len(x) else np.zeros(x.shape[1])
    span = np.where(span > 0, span, finite.max(axis=0, initial=0.0))
    scale = np.where(span > 0, qmax / np.maximum(span, 1e-30), 1.0)
    return np.clip(scale, 2.0**-100, MAX_INPUT_SCALE).astype(np.float32)


def fit_thresholds(q: np.ndarray, thresholds_per_feature: int, input_bits: int) -> np.ndarray:
    """Distributive thresholds: int32 `[D_in, T]`, non-decreasing, at equal-frequency quantiles of `q`."""
    qmin, qmax = input_range(input_bits)
    t = thresholds_per_feature
    if len(q) == 0:
        grid = np.linspace(qmin, qmax, t + 2)[1:-1]
        return np.tile(np.floor(grid), (q.shape[1], 1)).astype(np.int32)
    levels = np.arange(1, t + 1) / (t + 1)
    # bit = q > thr, so a threshold just below the quantile value puts it in the upper half
    thr = np.quantile(q.astype(np.float64), levels, axis=0, method="inverted_cdf").T - 1
    thr = np.clip(thr, qmin, qmax)
    return np.maximum.accumulate(thr, axis=1).astype(np.int32)


"""Calibration data for the converter: the split into fitting and held-out runs, and the model-level
fidelity measure used by the sensitivity table and `--layers auto`: the mean cosine between the
original and the converted model's first output, row by row along its last axis (per token for a
transformer), over the held-out runs, ignoring padded tokens.

Reading, checking, running and capturing go through `quweit.onnxio` (one I/O layer for every stage).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
from quweit.onnxio import Run, first_output, make_session, runs, synthetic_inputs


def synthetic_calibration(model, samples: int = 32, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """`onnxio.synthetic_inputs`, with the loud warning that fitted blocks are only as good as that data."""
    warnings.warn(
        "no --calib data: calibrating on RANDOM inputs made from the graph's input types. Fitted blocks will "
        "only be as good as that data; pass real model inputs with --calib (npz, one array per input).",
        stacklevel=2,
    )
    return synthetic_inputs(model, samples=samples, length=length, seed=seed)


def split(model, calib: dict[str, np.ndarray], batch: int, holdout: float = 0.25) -> tuple[list[Run], list[Run]]:
    """(fit runs, held-out runs): the last `holdout` share of samples is kept for measuring fidelity.

    Runs hold `batch` samples, or the model's fixed batch when its inputs declare one.
    """
    n = next(iter(calib.values())).shape[0]
    cut = n - max(1, round(n * holdout)) if n > 1 else n
    fit = runs(model, calib, batch, stop=cut)
    return fit, (runs(model, calib, batch, start=cut) if cut < n else fit)


def outputs(model, feeds: Iterable[Run]) -> list[np.ndarray]:
    """The first graph output of each run, as `[rows, D]` over real tokens."""
    return first_output(make_session(model), feeds)


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean cosine between matching rows of reference and candidate outputs (1.0: identical directions)."""
    ref = np.concatenate(reference).astype(np.float64)
    cand = np.concatenate(candidate).astype(np.float64)
    num = (ref * cand).sum(-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))

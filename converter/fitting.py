"""Distil one `WeightlessBlock` from captured (input, output) pairs of an MLP.

`fit_block` is the converter's entry point: a closed-form start (`custom_ops.closed_form`), then, when a
step or time budget allows, EFD training of the torch shim on a loss that suits regression targets.
The better of the two on held-out pairs is returned, so training never makes a fit worse.
"""

from __future__ import annotations

import numpy as np

from quweit.custom_ops.closed_form import closed_form_params
from quweit.custom_ops.config import BlockConfig
from quweit.custom_ops.params import WeightlessBlockParams

#: Pairs used by the closed form (it holds all thermometer bits in memory).
CLOSED_FORM_SAMPLES = 20000


def _check_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"fit_block: x and y must be 2-D [N, D], got shapes {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"fit_block: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("fit_block: no (input, output) pairs to fit")
    for name, value in (("x", x), ("y", y)):
        if not np.isfinite(value).all():
            raise ValueError(f"fit_block: {name} holds NaN or infinite values")
    return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)


def fit_block(
    x: np.ndarray,
    y: np.ndarray,
    *,
    config: BlockConfig,
    budget_seconds: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    **train_options,
) -> WeightlessBlockParams:
    """A block of structure `config.layer_sizes(D_out)` approximating `y ~ MLP(x)`.

    x: float32 `[N, D_in]` MLP inputs; y: float32 `[N, D_out]` MLP outputs. With neither budget given
    (or both zero) only the closed form runs. Extra keyword arguments go to `train_block`.
    """
    x, y = _check_pairs(x, y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    subset = order[:CLOSED_FORM_SAMPLES]
    params = closed_form_params(x[subset], y[subset], config, seed=seed)
    if not (budget_seconds or max_steps):
        return params
    from .block_training import train_block

    return train_block(
        params, x, y, budget_seconds=budget_seconds, max_steps=max_steps, seed=seed, progress=progress,
        **train_options,
    )

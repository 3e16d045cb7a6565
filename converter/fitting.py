"""Distil one `WeightlessBlock` from captured (input, output) pairs of an MLP.

`fit_block` is the converter's entry point: a closed-form start (`closed_form`), then, when a
step or time budget allows, EFD training of the torch shim on a loss that suits regression targets.
The better of the two on held-out pairs is returned, so training never makes a fit worse.
"""

from __future__ import annotations

import time

import numpy as np
from quweit.custom_ops.config import BlockConfig
from quweit.custom_ops.params import WeightlessBlockParams
from quweit.custom_ops.reference import evaluate

from .closed_form import CLOSED_FORM_SAMPLES, closed_form_params, fit_values


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
    return train_block(
        params, x, y, budget_seconds=budget_seconds, max_steps=max_steps, seed=seed, progress=progress,
        config=config, **train_options,
    )


def holdout_error(params: WeightlessBlockParams, x: np.ndarray, y: np.ndarray) -> float:
    """Mean over output dimensions of the fraction of variance left unexplained (exact op semantics)."""
    residual = evaluate(params, x).astype(np.float64) - y
    return float(((residual**2).mean(0) / np.maximum(y.var(0), 1e-12)).mean())


def refit_values(params: WeightlessBlockParams, x: np.ndarray, y: np.ndarray,
                 config: BlockConfig | None = None) -> WeightlessBlockParams:
    """Same mapping and tables (the popcount form may invert last-layer tables); encoded values, biases
    and output scales re-solved by least squares in `config`'s value form (default: 16-bit values)."""
    from quweit.custom_ops.reference import lut_layers, quantize_inputs, thermometer

    chunk = 2048  # the reference gathers [rows, L, n] int64: bound its memory
    bits = np.concatenate([lut_layers(params, thermometer(params, quantize_inputs(params, x[i:i + chunk])))
                           for i in range(0, len(x), chunk)])
    config = config or BlockConfig()
    v, b, scale, flip = fit_values(bits, y, params.group_size, value_bits=config.value_bits, popcount=config.popcount)
    tables = params.tables.copy()
    last = np.flatnonzero(flip) + params.layer_offsets[-1]
    entries = 1 << params.lut_inputs
    for w in range(params.words_per_table):  # invert the 2^n used bits of each flipped table
        used = min(64, entries - 64 * w)
        tables[last, w] ^= np.uint64((1 << used) - 1) if used < 64 else np.uint64(2**64 - 1)
    return params.replace(tables=tables, encoded_values=v, bias=b, output_scale=scale)


def train_block(
    params: WeightlessBlockParams,
    x: np.ndarray,
    y: np.ndarray,
    *,
    budget_seconds: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 1024,
    lr: float = 1e-2,
    value_lr: float = 1e-2,
    candidates: int = 1,
    holdout: float = 0.1,
    config: BlockConfig | None = None,
) -> WeightlessBlockParams:
    """EFD training of `params` on `(x, y)`, then a least-squares refit of the values; best on held-out pairs.

    Loss: mean squared error of each output dimension divided by that dimension's variance, so
    dimensions of small spread count as much as outliers (MLP outputs span orders of magnitude).
    `value_lr` is relative to each output's standard deviation.
    """
    import torch
    from quweit.custom_ops.torch_block import WeightlessBlock
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_hold = max(1, int(len(x) * holdout)) if len(x) > 1 else 0
    hold, train = order[:n_hold], order[n_hold:] if n_hold < len(x) else order
    x_hold, y_hold = (x[hold], y[hold]) if n_hold else (x, y)
    x_train = torch.from_numpy(np.ascontiguousarray(x[train]))
    y_train = torch.from_numpy(np.ascontiguousarray(y[train]))
    std = torch.from_numpy(np.maximum(y[train].std(0), 1e-6).astype(np.float32))

    torch.manual_seed(seed)
    module = WeightlessBlock.from_params(params, candidates=candidates, seed=seed).train()
    mean_std = float(std.mean())
    optimizer = torch.optim.Adam([
        {"params": list(module.tables) + list(module.mapping_weights), "lr": lr},
        {"params": [module.encoded_values, module.bias], "lr": value_lr * mean_std},
    ])
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    limit = max_steps if max_steps else None
    bar = tqdm(total=limit, desc=f"fit {params.node or 'block'}", disable=not progress, unit="step")
    step = 0
    while (limit is None or step < limit) and (
        budget_seconds is None or time.monotonic() - start < budget_seconds
    ):
        batch = torch.randint(len(x_train), (min(batch_size, len(x_train)),), generator=generator)
        prediction = module(x_train[batch])
        loss = (((prediction - y_train[batch]) / std) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        module.clamp_tables_()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()

    trained = module.to_params(node=params.node)
    refit = refit_values(trained, x[train][: CLOSED_FORM_SAMPLES], y[train][: CLOSED_FORM_SAMPLES], config)
    # training moves values freely: in a narrow or popcount value form only the refit keeps the form
    free_form = config is None or (config.value_bits >= 16 and not config.popcount)
    candidates_found = [params, trained, refit] if free_form else [params, refit]
    errors = [holdout_error(p, x_hold, y_hold) for p in candidates_found]
    return candidates_found[int(np.argmin(errors))]

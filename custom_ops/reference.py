"""The numpy reference of `WeightlessBlock` v1: the oracle every other implementation must equal bit for bit.

It follows docs/weightless_block.md section 3 step by step, favouring clarity over speed.
"""

from __future__ import annotations

import numpy as np

from .errors import WeightlessBlockError
from .params import WeightlessBlockParams, input_range

# The spec's steps on plain arrays (the fitting code uses them before a block exists), then the same
# steps on a block's parameters.


def quantize(x: np.ndarray, input_scale: np.ndarray, input_bits: int) -> np.ndarray:
    """Spec 3.1: float32 `[..., D_in]` -> int32 `q` (NaN -> 0, round half to even, saturate)."""
    qmin, qmax = input_range(input_bits)
    with np.errstate(all="ignore"):
        product = np.asarray(x, dtype=np.float32) * input_scale  # one binary32 multiplication per element
        rounded = np.rint(product)  # round half to even
    q = np.clip(rounded, qmin, qmax)
    return np.where(np.isnan(q), 0, q).astype(np.int32)


def thermometer_bits(q: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Spec 3.2: int32 `[M, D_in]` -> uint8 bits `[M, D_in * T]`, bit `i*T + t` = `q_i > thr[i, t]`."""
    width = q.shape[1] * thresholds.shape[1]
    return (q[:, :, None] > thresholds[None, :, :]).reshape(q.shape[0], width).astype(np.uint8)


def lut_addresses(bits: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Spec 3.3: addresses `[M, L]` of LUTs with `mapping [L, n]` over bits `[M, N]`, slot `l` -> bit `l`.

    One slot at a time, so memory stays at `M * L` (not `M * L * n`)."""
    address = np.zeros((bits.shape[0], mapping.shape[0]), dtype=np.int32)
    for slot in range(mapping.shape[1]):
        address |= bits[:, mapping[:, slot]].astype(np.int32) << slot
    return address


def quantize_inputs(params: WeightlessBlockParams, x: np.ndarray) -> np.ndarray:
    """Spec 3.1 with the block's scales, after the per-call input check."""
    return quantize(check_input(params, x), params.input_scale, params.input_bits)


def thermometer(params: WeightlessBlockParams, q: np.ndarray) -> np.ndarray:
    """Spec 3.2 with the block's thresholds."""
    return thermometer_bits(q, params.thresholds)


def lut_layers(params: WeightlessBlockParams, bits: np.ndarray) -> np.ndarray:
    """Spec 3.3: thermometer bits `[M, N_0]` -> last layer's bits `[M, L_{K-1}]`."""
    table_bits = params.table_bits()
    for k in range(params.num_layers):
        rows = params.layer_rows(k)
        mapping = params.mapping[rows]  # [L_k, n]
        bits = table_bits[rows][np.arange(mapping.shape[0])[None, :], lut_addresses(bits, mapping)]
    return bits


def conditional_sum(params: WeightlessBlockParams, bits: np.ndarray) -> np.ndarray:
    """Spec 3.4: last-layer bits `[M, D_out * G]` -> int32 accumulators `[M, D_out]` (additions only)."""
    grouped = bits.reshape(bits.shape[0], params.out_features, params.group_size).astype(bool)
    values = params.encoded_values.reshape(params.out_features, params.group_size).astype(np.int64)
    acc = np.where(grouped, values[None], 0).sum(axis=-1) + params.bias.astype(np.int64)
    return acc.astype(np.int32)


def dequantize(params: WeightlessBlockParams, acc: np.ndarray) -> np.ndarray:
    """Spec 3.5: int32 -> binary32 (nearest even), then one binary32 multiplication per output."""
    with np.errstate(over="ignore"):
        return acc.astype(np.float32) * params.output_scale


def integer_core(params: WeightlessBlockParams, q: np.ndarray) -> np.ndarray:
    """Quantized inputs `[M, D_in]` -> accumulators `[M, D_out]`: what the hardware computes."""
    return conditional_sum(params, lut_layers(params, thermometer(params, q)))


def evaluate(params: WeightlessBlockParams, x: np.ndarray) -> np.ndarray:
    """`Y = WeightlessBlock(X)` for float32 `X` of shape `[..., D_in]`; returns float32 `[..., D_out]`."""
    x = check_input(params, x)
    lead = x.shape[:-1]
    q = quantize_inputs(params, x.reshape(-1, params.in_features))
    y = dequantize(params, integer_core(params, q))
    return y.reshape(*lead, params.out_features)


def check_input(params: WeightlessBlockParams, x: np.ndarray) -> np.ndarray:
    """`X` must be float32 with last axis `D_in` (spec section 5, checked per call)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise WeightlessBlockError("X", f"must be a float32 array, got {got}", node=params.node)
    if x.ndim < 1 or x.shape[-1] != params.in_features:
        raise WeightlessBlockError(
            "X", f"last axis must be in_features={params.in_features}, got shape {list(x.shape)}", node=params.node
        )
    return x

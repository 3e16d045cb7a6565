"""A closed-form first fit of a block to (input, output) pairs, with no gradient training.

What it does, and why (see ../shared/FACTS.md, "what helped"):
- input scales and distributive thresholds from the data (`encoding_fit`);
- each output's LUTs read the thermometer bits of the features with the largest linear influence on
  that output (ridge regression on standardised inputs), each slot at a random threshold;
- the last layer's truth tables are grown greedily, one LUT per output at a time, each table bit set
  where the mean residual of its address is positive (a boosting step over decision tables);
- encoded values and biases are solved by least squares (Adam moves them far too slowly for output
  dimensions of large spread), then quantized to `value_bits` with one output scale per output.
Hidden layers (if any) start as random tables over the most influential features; EFD training
refines them.
"""

from __future__ import annotations

import numpy as np
from quweit.custom_ops.config import BlockConfig
from quweit.custom_ops.params import WeightlessBlockParams, pack_tables
from quweit.custom_ops.reference import lut_addresses, quantize, thermometer_bits

from .encoding_fit import fit_input_scale, fit_thresholds

DEFAULT_VALUE_BITS = 16
RIDGE = 1e-3
#: Pairs used by the closed form (it holds all thermometer bits in memory).
CLOSED_FORM_SAMPLES = 20000


def linear_influence(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`|W|` of a ridge fit `y ~ standardise(x) @ W`: float64 `[D_in, D_out]`."""
    x = x.astype(np.float64)
    xs = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    yc = y.astype(np.float64) - y.mean(0)
    gram = xs.T @ xs + RIDGE * len(x) * np.eye(x.shape[1])
    return np.abs(np.linalg.solve(gram, xs.T @ yc))


def solve_values(c: np.ndarray, y: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output, least squares `y_o ~ bias_o + sum_g v_og c_og`; returns `(v [D_out*G], bias [D_out])`."""
    m, d_out = y.shape
    design = np.concatenate(
        [c.reshape(m, d_out, group_size).astype(np.float64), np.ones((m, d_out, 1))], axis=2
    ).transpose(1, 0, 2)  # [D_out, M, G+1]
    # ridge on the encoded values only: shrinking the bias (the intercept) would pull every output
    # towards 0 (a constant target of 7 fitted on one sample came out as 6.993)
    penalty = RIDGE * np.diag(np.r_[np.ones(group_size), 0.0])
    gram = design.transpose(0, 2, 1) @ design + penalty
    rhs = design.transpose(0, 2, 1) @ y.T.astype(np.float64)[:, :, None]
    sol = np.linalg.solve(gram, rhs)[:, :, 0]  # [D_out, G+1]
    return sol[:, :group_size].reshape(-1), sol[:, group_size]


def quantize_values(values: np.ndarray, bias: np.ndarray, group_size: int, value_bits: int):
    """Real `(values, bias)` -> int32 ones and a float32 output scale per output (round to nearest)."""
    d_out = bias.shape[0]
    peak = np.maximum(np.abs(values.reshape(d_out, group_size)).max(1), np.abs(bias))
    scale = np.where(peak > 0, peak / ((1 << (value_bits - 1)) - 1), 1.0).astype(np.float32)
    unit = scale.astype(np.float64)
    v = np.rint(values.reshape(d_out, group_size) / unit[:, None]).reshape(-1).astype(np.int32)
    b = np.rint(bias / unit).astype(np.int32)
    return v, b, scale


def popcount_values(c: np.ndarray, y: np.ndarray, values: np.ndarray, group_size: int, value_bits: int):
    """The popcount form of a least-squares fit: every LUT of a group adds the same power of two.

    A LUT whose value is negative is inverted (`v * c = |v| * (1 - c) + v`), so every contribution is
    positive; then per output `y ~ b + m * popcount` by least squares, and `m` becomes the power of two
    `V` times `output_scale` with `|bias| <= 2^(value_bits-1) - 1`. Returns `(v, b, scale, flip [L])`.
    """
    m_rows, d_out = y.shape
    flip = values < 0
    bits = np.where(flip[None, :], 1 - c, c).reshape(m_rows, d_out, group_size).sum(-1).astype(np.float64)
    pop_mean, y_mean = bits.mean(0), y.astype(np.float64).mean(0)
    pc = bits - pop_mean
    slope = (pc * (y - y_mean)).sum(0) / np.maximum((pc * pc).sum(0) + RIDGE, 1e-12)
    # a negative slope: invert the whole group once more (popcount -> G - popcount)
    turn = slope < 0
    flip ^= np.repeat(turn, group_size)
    slope = np.abs(slope)
    pop_mean = np.where(turn, group_size - pop_mean, pop_mean)
    offset = y_mean - slope * pop_mean
    limit = (1 << (value_bits - 1)) - 1
    unit0 = np.maximum(np.maximum(slope, np.abs(offset)) / limit, 1e-30)
    power = np.where(slope > 0, np.floor(np.log2(np.maximum(slope / unit0, 1.0))), 0)
    step = np.where(slope > 0, slope / 2.0**power, np.where(offset != 0, unit0, 1.0))
    scale = step.astype(np.float32)
    unit = scale.astype(np.float64)
    v = np.repeat(np.where(slope > 0, 2.0**power, 0), group_size).astype(np.int32)
    b = np.clip(np.rint(offset / unit), -limit, limit).astype(np.int32)
    return v, b, scale, flip


def fit_values(c: np.ndarray, y: np.ndarray, group_size: int, *, value_bits: int = DEFAULT_VALUE_BITS,
               popcount: bool = False):
    """Encoded values, biases and output scales for last-layer bits `c [M, L]` and targets `y [M, D_out]`:
    least squares, quantized to `value_bits`, or in the popcount form. Returns `(v, b, scale, flip [L])`;
    `flip` marks last-layer tables to invert (popcount form only)."""
    values, bias = solve_values(c, y, group_size)
    if popcount:
        return popcount_values(c, y, values, group_size, value_bits)
    v, b, scale = quantize_values(values, bias, group_size, value_bits)
    return v, b, scale, np.zeros(len(values), dtype=bool)


def closed_form_params(
    x: np.ndarray, y: np.ndarray, config: BlockConfig, *, seed: int = 0, value_bits: int | None = None
) -> WeightlessBlockParams:
    """A valid block of structure `config.layer_sizes(D_out)` fitted to `y ~ f(x)` without training."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n, t, g = config.lut_inputs, config.thresholds_per_feature, config.luts_per_output
    d_in, d_out = x.shape[1], y.shape[1]
    sizes = config.layer_sizes(d_out)

    scale = fit_input_scale(x, config.input_bits)
    q = quantize(x, scale, config.input_bits)
    thresholds = fit_thresholds(q, t, config.input_bits)
    bits = thermometer_bits(q, thresholds)
    influence = linear_influence(x, y) if len(x) > 1 else np.ones((d_in, d_out))
    ranked = np.argsort(-influence, axis=0, kind="stable")  # [D_in, D_out], best feature first

    mappings, tables = [], []
    if len(sizes) > 1:
        top = np.argsort(-influence.sum(1), kind="stable")[: max(n, min(d_in, sizes[0] * n // 2 + 1))]
        features = rng.choice(top, size=(sizes[0], n))
        mappings.append(features * t + rng.integers(0, t, size=(sizes[0], n)))
        for size, prev in zip(sizes[1:-1], sizes[:-2]):
            mappings.append(rng.integers(0, prev, size=(size, n)))
        for m in mappings:
            tables.append(rng.integers(0, 2, size=(len(m), 1 << n)).astype(np.uint8))
            bits = tables[-1][np.arange(len(m))[None], lut_addresses(bits, m)]
        last = rng.integers(0, sizes[-2], size=(sizes[-1], n))
    else:
        pool = min(d_in, g * n)
        slot = (np.arange(g)[:, None] * n + np.arange(n)[None]) % pool  # [G, n] rank used by each slot
        features = ranked[slot].transpose(2, 0, 1).reshape(-1, n)  # [D_out*G, n]
        last = features * t + rng.integers(0, t, size=features.shape)

    # greedy tables for the last layer, one LUT per output per round
    last_tables = np.zeros((sizes[-1], 1 << n), dtype=np.uint8)
    residual = (y - y.mean(0)).astype(np.float64)
    addr = lut_addresses(bits, last).reshape(len(x), d_out, g)  # [M, D_out, G]
    out_index = np.arange(d_out)[None, :] * (1 << n)
    for j in range(g):
        key = (out_index + addr[:, :, j]).reshape(-1)
        sums = np.bincount(key, residual.reshape(-1), minlength=d_out << n)
        counts = np.bincount(key, minlength=d_out << n)
        mean = (sums / np.maximum(counts, 1)).reshape(d_out, 1 << n)
        table = (mean > 0).astype(np.uint8)
        last_tables[np.arange(d_out) * g + j] = table
        c = table[np.arange(d_out)[None, :], addr[:, :, j]]  # [M, D_out]
        on = c.astype(bool)
        mean_on = np.where(on, residual, 0).sum(0) / np.maximum(on.sum(0), 1)
        mean_off = np.where(~on, residual, 0).sum(0) / np.maximum((~on).sum(0), 1)
        residual -= np.where(on, mean_on, mean_off)
    c_all = last_tables[np.arange(sizes[-1])[None, :], addr.reshape(len(x), -1)]
    v, b, out_scale, flip = fit_values(c_all, y, g, value_bits=value_bits or config.value_bits,
                                       popcount=config.popcount)
    last_tables[flip] ^= 1
    tables.append(last_tables)
    mappings.append(last)
    return WeightlessBlockParams(
        lut_inputs=n,
        layer_sizes=sizes,
        input_bits=config.input_bits,
        input_scale=scale,
        thresholds=thresholds,
        mapping=np.concatenate(mappings).astype(np.int32),
        tables=pack_tables(np.concatenate(tables)),
        encoded_values=v,
        bias=b,
        output_scale=out_scale,
    )

"""Test vectors for the RTL: quantized inputs q and the expected accumulators from the numpy oracle
(`quweit.custom_ops.integer_core`), written as $readmemh files (one hex word per vector)."""

from __future__ import annotations

import numpy as np
from quweit.custom_ops import WeightlessBlockParams, integer_core

from .rtl import ACC_BITS


def random_inputs(params: WeightlessBlockParams, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` q vectors: uniform over [qmin, qmax], with every fourth row drawn around the thresholds
    (t - 1, t, t + 1) and the first two rows at qmin / qmax, so each comparator flips both ways."""
    q = rng.integers(params.qmin, params.qmax + 1, size=(count, params.in_features))
    near = rng.integers(0, params.thresholds_per_feature, size=(count, params.in_features))
    around = params.thresholds[np.arange(params.in_features)[None, :], near] + rng.integers(-1, 2, size=near.shape)
    q[::4] = np.clip(around, params.qmin, params.qmax)[::4]
    q[:1] = params.qmin
    q[1:2] = params.qmax
    return q.astype(np.int32)


def pack_words(values: np.ndarray, width: int) -> list[int]:
    """Rows of signed integers -> one unsigned int per row, column c at bits [c*width, (c+1)*width)."""
    unsigned = values.astype(np.int64) & ((1 << width) - 1)
    words = []
    for row in unsigned.tolist():
        word = 0
        for column, value in enumerate(row):
            word |= value << (column * width)
        words.append(word)
    return words


def hex_lines(words: list[int], width: int) -> str:
    digits = (width + 3) // 4
    return "".join(f"{word:0{digits}x}\n" for word in words)


def vector_files(params: WeightlessBlockParams, q: np.ndarray) -> tuple[str, str, np.ndarray]:
    """(input hex text, expected hex text, expected accumulators) for q vectors `[V, D_in]`."""
    expected = integer_core(params, q)
    q_text = hex_lines(pack_words(q, params.input_bits), params.in_features * params.input_bits)
    acc_text = hex_lines(pack_words(expected, ACC_BITS), params.out_features * ACC_BITS)
    return q_text, acc_text, expected

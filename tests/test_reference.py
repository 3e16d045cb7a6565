"""The oracle itself, checked against the spec by hand and by an independent scalar re-implementation."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks import adversarial_inputs, blocks, same_bits
from quweit.custom_ops import WeightlessBlockParams, evaluate, pack_tables, quantize_inputs, unpack_tables


def scalar_spec(params: WeightlessBlockParams, x: np.ndarray) -> np.ndarray:
    """docs/weightless_block.md section 3, one token at a time with Python ints (no numpy vector tricks)."""
    qmin, qmax = params.qmin, params.qmax
    tables = params.table_bits()
    out = []
    for token in x.reshape(-1, params.in_features):
        q = []
        for value, scale in zip(token, params.input_scale):
            with np.errstate(over="ignore"):
                product = np.float32(value) * np.float32(scale)
            q.append(0 if math.isnan(product) else int(min(max(np.rint(product), qmin), qmax)))
        bits = [int(q[i] > params.thresholds[i, t]) for i in range(params.in_features)
                for t in range(params.thresholds_per_feature)]
        for k in range(params.num_layers):
            rows = params.layer_rows(k)
            nxt = []
            for r in range(rows.start, rows.stop):
                address = sum(bits[params.mapping[r, l]] << l for l in range(params.lut_inputs))
                word = int(params.tables[r, address >> 6])
                nxt.append((word >> (address & 63)) & 1)
                assert nxt[-1] == tables[r, address]
            bits = nxt
        g = params.group_size
        y = []
        for o in range(params.out_features):
            acc = int(params.bias[o])
            for j in range(o * g, o * g + g):
                if bits[j]:
                    acc += int(params.encoded_values[j])
            y.append(np.float32(np.float32(acc) * params.output_scale[o]))
        out.append(y)
    return np.array(out, dtype=np.float32).reshape(*x.shape[:-1], params.out_features)


def hand_block() -> WeightlessBlockParams:
    """Two features, T=2, one layer of two LUT2 (an AND and an XOR), one output summing both."""
    return WeightlessBlockParams(
        lut_inputs=2,
        layer_sizes=(2,),
        input_bits=8,
        input_scale=np.array([1.0, 2.0], np.float32),
        thresholds=np.array([[-1, 3], [0, 10]], np.int32),
        # LUT 0 reads bit 0 (x0 > -1) and bit 2 (x1 > 0); LUT 1 reads bit 1 (x0 > 3) and bit 3 (x1 > 10)
        mapping=np.array([[0, 2], [1, 3]], np.int32),
        tables=pack_tables(np.array([[0, 0, 0, 1], [0, 1, 1, 0]])),  # AND, XOR; entry = address
        encoded_values=np.array([5, -7], np.int32),
        bias=np.array([100], np.int32),
        output_scale=np.array([0.5], np.float32),
    )


def test_hand_computed_example():
    p = hand_block()
    x = np.array([[0.0, 1.0], [5.0, 1.0], [5.0, 6.0], [-3.0, -1.0], [np.nan, 0.25]], np.float32)
    # q = [0, 2]: bits (1, 0, 1, 0): AND=1, XOR=0 -> 100 + 5 = 105 -> 52.5
    # q = [5, 2]: bits (1, 1, 1, 0): AND=1, XOR=1 -> 100 + 5 - 7 = 98 -> 49
    # q = [5, 12]: bits (1, 1, 1, 1): AND=1, XOR=0 -> 105 -> 52.5
    # q = [-3, -2]: bits (0, 0, 0, 0): 100 -> 50
    # q = [0 (NaN), 0 (0.5 rounds half to even)]: bits (1, 0, 0, 0): AND=0, XOR=0 -> 50
    expected = np.array([[52.5], [49.0], [52.5], [50.0], [50.0]], np.float32)
    assert same_bits(evaluate(p, x), expected)


def test_quantization_rounds_half_to_even_and_saturates():
    p = hand_block()
    x = np.array([[0.5, 0.75], [1.5, -0.75], [2.5, 1e9], [-np.inf, np.inf], [np.nan, -1e-40]], np.float32)
    q = quantize_inputs(p, x)
    assert q.tolist() == [[0, 2], [2, -2], [2, 127], [-128, 127], [0, 0]]


def test_table_packing_is_lsb_first_init_word():
    bits = np.zeros((1, 64), np.uint8)
    bits[0, [0, 5, 63]] = 1
    assert int(pack_tables(bits)[0, 0]) == (1 << 0) | (1 << 5) | (1 << 63)
    wide = np.random.default_rng(1).integers(0, 2, size=(3, 256))
    packed = pack_tables(wide)
    assert packed.shape == (3, 4)
    assert np.array_equal(unpack_tables(packed, 8), wide)
    assert int(packed[0, 1]) & 1 == wide[0, 64]


@settings(max_examples=60, deadline=None)
@given(params=blocks(max_features=12, max_layers=3), seed=st.integers(0, 2**31), tokens=st.integers(0, 4))
def test_reference_equals_scalar_spec(params, seed, tokens):
    x = adversarial_inputs(params, (tokens,), seed)
    assert same_bits(evaluate(params, x), scalar_spec(params, x))

"""The native TVM lowering of `WeightlessBlock`: one TE computation (-> a TIR PrimFunc compiled by LLVM)
following docs/weightless_block.md section 3 step by step, so a converted model runs end to end in TVM
without the BYOC backend. The BYOC pattern table matches the `call_tir` this module emits.

The block's constants are call arguments (not baked into the PrimFunc) in this order:
`x [M, D_in], input_scale, thresholds, input_range [qmin, qmax], (mapping_k, tables_k) per layer,
encoded_values, bias, output_scale`. Splitting mapping/tables per layer and passing the input range as
data keeps the whole structure (layer sizes, n, input_bits) readable from argument shapes and values,
which is what the BYOC codegen sees.
"""

from __future__ import annotations

import numpy as np
from quweit.custom_ops import WeightlessBlockParams

PRIMFUNC_NAME = "quweit_weightless_block"


def call_arguments(params: WeightlessBlockParams) -> list[np.ndarray]:
    """The constant arguments after `x`, in the order documented above."""
    arrays = [params.input_scale, params.thresholds, np.array([params.qmin, params.qmax], dtype=np.int32)]
    for k in range(params.num_layers):
        rows = params.layer_rows(k)
        arrays += [np.ascontiguousarray(params.mapping[rows]), np.ascontiguousarray(params.tables[rows])]
    return arrays + [params.encoded_values, params.bias, params.output_scale]


def params_from_arguments(arrays: list[np.ndarray], node: str | None = None) -> WeightlessBlockParams:
    """Inverse of `call_arguments`: rebuild (and validate again) the block from the constants."""
    input_scale, thresholds, input_range, *layers, encoded_values, bias, output_scale = arrays
    qmin, qmax = (int(v) for v in input_range)
    if qmin != -qmax - 1:
        raise ValueError(f"quweit block {node}: input range [{qmin}, {qmax}] is not a two's complement range")
    mappings, tables = layers[0::2], layers[1::2]
    return WeightlessBlockParams(
        lut_inputs=int(mappings[0].shape[1]),
        layer_sizes=tuple(int(m.shape[0]) for m in mappings),
        input_bits=int(qmax).bit_length() + 1,
        input_scale=input_scale,
        thresholds=thresholds,
        mapping=np.concatenate(mappings).astype(np.int32),
        tables=np.concatenate(tables).astype(np.uint64),
        encoded_values=encoded_values,
        bias=bias,
        output_scale=output_scale,
        node=node,
    )


def weightless_block_te(x, input_scale, thresholds, input_range, *rest):
    """TE of the block on 2-D `x [M, D_in]`; returns float32 `[M, D_out]` (spec 3.1-3.5)."""
    from tvm import te, tirx

    *layers, encoded_values, bias, output_scale = rest
    rows, d_in = x.shape
    T = int(thresholds.shape[1])
    d_out = int(bias.shape[0])
    G = int(encoded_values.shape[0]) // d_out
    zero = tirx.const(0, "int32")

    def quantize(m, i):
        # 3.1: one binary32 multiplication, round half to even, saturate; NaN -> 0
        rounded = tirx.round(x[m, i] * input_scale[i])
        low, high = input_range[0].astype("float32"), input_range[1].astype("float32")
        clipped = tirx.max(tirx.min(rounded, high), low).astype("int32")
        return tirx.Select(tirx.isnan(x[m, i]), zero, clipped)

    q = te.compute((rows, d_in), quantize, name="quantize")
    bits = te.compute(  # 3.2: bit i*T + t = q_i > thresholds[i, t]
        (rows, d_in * T),
        lambda m, j: (q[m, j // T] > thresholds[j // T, j % T]).astype("int32"),
        name="thermometer",
    )
    for k, (mapping, tables) in enumerate(zip(layers[0::2], layers[1::2])):
        bits = te.compute((rows, int(mapping.shape[0])), _lut_lookup(bits, mapping, tables), name=f"lut_layer{k}")
    g = te.reduce_axis((0, G), name="g")
    summed = te.compute(  # 3.4: additions only; int32 cannot overflow (validated bound)
        (rows, d_out),
        lambda m, o: te.sum(tirx.Select(bits[m, o * G + g] != 0, encoded_values[o * G + g], zero), axis=g),
        name="conditional_sum",
    )
    return te.compute(  # 3.5: int32 -> binary32 (nearest even), one multiplication
        (rows, d_out),
        lambda m, o: (summed[m, o] + bias[o]).astype("float32") * output_scale[o],
        name="dequantize",
    )


def _lut_lookup(prev, mapping, tables):
    """3.3: address bit l from mapping slot l (LSB first); output = table bit a of the packed row."""
    from tvm import tirx

    n = int(mapping.shape[1])

    def lookup(m, j):
        address = prev[m, mapping[j, 0]]
        for slot in range(1, n):
            address = address | (prev[m, mapping[j, slot]] << slot)
        word = tables[j, address >> 6]
        return ((word >> (address & 63).astype("uint64")) & tirx.const(1, "uint64")).astype("int32")

    return lookup


def emit_block(bb, x, params: WeightlessBlockParams):
    """Emit the block applied to `x [..., D_in]` into BlockBuilder `bb`; returns `[..., D_out]`."""
    from tvm import relax, tirx

    shape = list(x.ty.shape)
    flat = bb.emit(relax.op.reshape(x, (-1, params.in_features)))
    # a fresh row count, so the PrimFunc needs no symbolic arguments beside its tensors
    rows = tirx.Var("rows", "int64")
    flat = bb.match_cast(flat, relax.TensorType([rows, params.in_features], "float32"))
    consts = [relax.const(value) for value in call_arguments(params)]
    out = bb.emit_te(weightless_block_te, flat, *consts, primfunc_name_hint=PRIMFUNC_NAME)
    return relax.op.reshape(out, [*shape[:-1], params.out_features])

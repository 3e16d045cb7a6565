"""The native TVM lowering of `WeightlessBlock`: one TE computation (-> a TIR PrimFunc compiled by LLVM)
following docs/weightless_block.md section 3 step by step, so a converted model runs end to end in TVM
without the BYOC backend. The BYOC pattern table matches the `call_tir` this module emits.

The block's constants are call arguments (not baked into the PrimFunc): `x [M, D_in]`, then a structure
header (int32 `[input_bits, lut_inputs, K, L_0 .. L_{K-1}]`: the op's attributes that shapes do not
carry), then the op's own seven parameter inputs in the op's order (`PARAM_NAMES`). The BYOC codegen
rebuilds the block with `params_from_arguments` by name, from the attributes as written in the model.
"""

from __future__ import annotations

import functools

import numpy as np
from quweit.custom_ops import PARAM_NAMES, WeightlessBlockParams

PRIMFUNC_NAME = "quweit_weightless_block"


def structure_header(params: WeightlessBlockParams) -> np.ndarray:
    """The attributes that the parameter shapes do not say (input_bits, n, layer sizes)."""
    return np.array([params.input_bits, params.lut_inputs, params.num_layers, *params.layer_sizes], dtype=np.int32)


def call_arguments(params: WeightlessBlockParams) -> list[np.ndarray]:
    """The constant arguments after `x`: the structure header, then the op's parameter inputs."""
    arrays = params.arrays()
    return [structure_header(params), *(arrays[name] for name in PARAM_NAMES)]


def params_from_arguments(arrays: list[np.ndarray], node: str | None = None) -> WeightlessBlockParams:
    """Inverse of `call_arguments` (the block is validated again on construction)."""
    header, *inputs = arrays
    input_bits, lut_inputs, layers, *sizes = (int(v) for v in header)
    if len(sizes) != layers or len(inputs) != len(PARAM_NAMES):
        raise ValueError(f"quweit block {node}: malformed call arguments (header {list(header)}, "
                         f"{len(inputs)} parameter inputs)")
    return WeightlessBlockParams(lut_inputs=lut_inputs, layer_sizes=tuple(sizes), input_bits=input_bits, node=node,
                                 **dict(zip(PARAM_NAMES, inputs)))


def weightless_block_te(x, header, input_scale, thresholds, mapping, tables, encoded_values, bias, output_scale,
                        *, params: WeightlessBlockParams):
    """TE of the block on 2-D `x [M, D_in]`; returns float32 `[M, D_out]` (spec 3.1-3.5). The structure
    (n, layer sizes, input range) comes from `params` as compile-time constants."""
    from tvm import te, tirx

    del header  # carried for the BYOC codegen only
    rows, d_in = x.shape
    T, G, d_out = params.thresholds_per_feature, params.group_size, params.out_features
    zero = tirx.const(0, "int32")
    low, high = tirx.const(float(params.qmin), "float32"), tirx.const(float(params.qmax), "float32")

    def quantize(m, i):
        # 3.1: one binary32 multiplication, round half to even, saturate; NaN -> 0
        rounded = tirx.round(x[m, i] * input_scale[i])
        clipped = tirx.max(tirx.min(rounded, high), low).astype("int32")
        return tirx.Select(tirx.isnan(x[m, i]), zero, clipped)

    q = te.compute((rows, d_in), quantize, name="quantize")
    bits = te.compute(  # 3.2: bit i*T + t = q_i > thresholds[i, t]
        (rows, d_in * T),
        lambda m, j: (q[m, j // T] > thresholds[j // T, j % T]).astype("int32"),
        name="thermometer",
    )
    for k in range(params.num_layers):
        offset = params.layer_offsets[k]
        lookup = _lut_lookup(bits, mapping, tables, offset, params.lut_inputs)
        bits = te.compute((rows, params.layer_sizes[k]), lookup, name=f"lut_layer{k}")
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


def _lut_lookup(prev, mapping, tables, offset: int, n: int):
    """3.3: address bit l from mapping slot l (LSB first); output = table bit a of the packed row."""
    from tvm import tirx

    def lookup(m, j):
        row = j + offset
        address = prev[m, mapping[row, 0]]
        for slot in range(1, n):
            address = address | (prev[m, mapping[row, slot]] << slot)
        word = tables[row, address >> 6]
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
    compute = functools.partial(weightless_block_te, params=params)  # structure as compile-time constants
    out = bb.emit_te(compute, flat, *consts, primfunc_name_hint=PRIMFUNC_NAME)
    return relax.op.reshape(out, [*shape[:-1], params.out_features])

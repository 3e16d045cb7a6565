"""C++ source of one block for host execution (the BYOC codegen's first product), from templates/c/."""

from __future__ import annotations

import numpy as np
from quweit.custom_ops import WeightlessBlockParams

from .render import render


def _float_literals(values: np.ndarray) -> list[str]:
    """Exact C++ hexadecimal float literals (binary32 values are exact in a double's hex form)."""
    return [f"{float(v).hex()}f" for v in values.astype(np.float64)]


def _int_literals(values: np.ndarray) -> list[str]:
    # INT32_MIN cannot be written as a negated literal without overflow warnings: spell it as an expression
    return [str(v) if v != -(2**31) else "(-2147483647 - 1)" for v in values.tolist()]


def render_c_block(symbol: str, params: WeightlessBlockParams) -> str:
    """A translation unit exporting `symbol(X, Y)` through the tvm-ffi ABI (inputs first, then output)."""
    layers = []
    for k in range(params.num_layers):
        rows = params.layer_rows(k)
        layers.append({
            "k": k,
            "size": params.layer_sizes[k],
            "mapping": _int_literals(params.mapping[rows].reshape(-1)),
            "tables": [f"{int(w):#x}ULL" for w in params.tables[rows].reshape(-1)],
        })
    return render(
        "c/block.cc.j2",
        symbol=symbol, din=params.in_features, dout=params.out_features, T=params.thresholds_per_feature,
        n=params.lut_inputs, G=params.group_size, B=params.input_bits, words=params.words_per_table,
        layer_sizes=list(params.layer_sizes), qmin=params.qmin, qmax=params.qmax,
        input_scale=_float_literals(params.input_scale), thresholds=_int_literals(params.thresholds.reshape(-1)),
        layers=layers, encoded_values=_int_literals(params.encoded_values), bias=_int_literals(params.bias),
        output_scale=_float_literals(params.output_scale),
    )

"""Counting what a conversion saves: parameters and multiply-accumulates per token, whole model.

MACs count every Linear - MatMul/Gemm/MatMulInteger with a constant 2-D weight, float or quantized
(behind a `DequantizeLinear`) - as `rows * cols` per token and, for each block, its `D_in + D_out` scale
multiplications. Activation x activation products (attention scores) depend on
the sequence length and are left out of both sides.
"""

from __future__ import annotations

import numpy as np
import onnx
from quweit.custom_ops import WeightlessBlockParams

LINEAR_OPS = ("MatMul", "Gemm", "MatMulInteger")


def linear_weight(node: onnx.NodeProto, inits: dict, producers: dict) -> onnx.TensorProto | None:
    """The weight initializer of a Linear node (also behind a QDQ `DequantizeLinear`), else None."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    name = node.input[1]
    source = producers.get(name)
    if name not in inits and source is not None and source.op_type == "DequantizeLinear":
        name = source.input[0]
    return inits.get(name)


def weight_macs(model: onnx.ModelProto) -> int:
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    total = 0
    for node in model.graph.node:
        weight = linear_weight(node, inits, producers)
        if weight is not None and len(weight.dims) == 2:
            total += int(weight.dims[0]) * int(weight.dims[1])
    return total


def block_macs(params: WeightlessBlockParams) -> int:
    """Multiplications per token of a block: input and output scaling only (the LUT core adds)."""
    return params.in_features + params.out_features


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


def totals(before: onnx.ModelProto, after: onnx.ModelProto, blocks: list[WeightlessBlockParams]) -> dict[str, object]:
    macs_before = weight_macs(before)
    macs_after = weight_macs(after) + sum(block_macs(p) for p in blocks)
    return {
        "macs_before": macs_before,
        "macs_after": macs_after,
        "mult_share_removed": (1.0 - macs_after / macs_before) if macs_before else 0.0,
        "params_before": parameter_count(before),
        "params_after": parameter_count(after),
    }

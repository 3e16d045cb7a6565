"""Counting what a conversion saves: parameters and multiply-accumulates per token, whole model.

MACs count every Linear - MatMul/Gemm/MatMulInteger with a constant 2-D weight, float or quantized
(behind a `DequantizeLinear`) - as `rows * cols` per token and, for each block, its `D_in + D_out` scale
multiplications. Activation x activation products (attention scores) depend on the sequence length and
are left out of both sides. Counted on the one in-memory model, before and after its rewrites.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from quweit.custom_ops import WeightlessBlockParams

LINEAR_OPS = ("MatMul", "Gemm", "MatMulInteger")


def linear_weight(node: ir.Node) -> ir.TensorProtocol | None:
    """The constant weight of a Linear node (also behind a QDQ `DequantizeLinear`), else None."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None:
        return None
    source = weight.producer()
    if weight.const_value is None and source is not None and source.op_type == "DequantizeLinear" \
            and source.inputs and source.inputs[0] is not None:
        weight = source.inputs[0]
    return weight.const_value


def weight_macs(model: ir.Model) -> int:
    total = 0
    for node in model.graph:
        weight = linear_weight(node)
        if weight is not None and len(weight.shape) == 2:
            total += math.prod(weight.shape.numpy())
    return total


def block_macs(params: WeightlessBlockParams) -> int:
    """Multiplications per token of a block: input and output scaling only (the LUT core adds)."""
    return params.in_features + params.out_features


def parameter_count(model: ir.Model) -> int:
    return int(sum(math.prod(v.const_value.shape.numpy()) for v in model.graph.initializers.values()
                   if v.const_value is not None))


def counts(model: ir.Model) -> dict[str, int]:
    """What `totals` compares: the model's weight MACs and parameters now."""
    return {"macs": weight_macs(model), "params": parameter_count(model)}


def totals(before: dict[str, int], after: ir.Model, blocks: list[WeightlessBlockParams]) -> dict[str, object]:
    macs_before = before["macs"]
    macs_after = weight_macs(after) + sum(block_macs(p) for p in blocks)
    return {
        "macs_before": macs_before,
        "macs_after": macs_after,
        "mult_share_removed": (1.0 - macs_after / macs_before) if macs_before else 0.0,
        "params_before": before["params"],
        "params_after": parameter_count(after),
    }

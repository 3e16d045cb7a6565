"""int8-quantized Linears: onnxruntime's `quantize_dynamic` form, and dequantizing quantized weights.

`quantize_dynamic` writes each Linear as `DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, xz, Wz) ->
Cast(float) -> Mul(., xs * Ws)` (then the float bias `Add`). Like the activations, that chain is first
fused into one call of a model-local function `quweit.linear::int8_matmul(xq, xs, xz, Wq, Wz, Ws)` (the
`DynamicQuantizeLinear` stays outside: gate and up projections of a gated MLP share it), so the MLP rules
see one node per Linear and their commuted copies stay few; calls that no MLP consumed are inlined back.

Static QDQ models keep float `MatMul`s whose weights are `DequantizeLinear(Wq, s, z)` of constants:
`dequantized_constant` reads them (`linear.constant` calls it); the QDQ pairs on activations are looked
through (`see_through`). Either way the weights are dequantized for fitting and the block replaces the
whole quantize -> matmul -> dequantize chain.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

LINEAR_DOMAIN = "quweit.linear"
INT8_MATMUL = "int8_matmul"


class DynamicInt8MatMul(pattern.RewriteRuleClassBase):
    """`Cast(MatMulInteger(xq, Wq, xz, Wz)) * (xs * Ws)` as one call (weights stay call inputs, not copies)."""

    def __init__(self) -> None:
        super().__init__(name=f"fuse[{INT8_MATMUL}]", as_function=True)

    def pattern(self, op, xq, xs, xz, wq, wz, ws):
        product = op.MatMulInteger(xq, wq, xz, wz)
        return op.Mul(op.Cast(product, to=ir.DataType.FLOAT), op.Mul(xs, ws))

    def rewrite(self, op, xq, xs, xz, wq, wz, ws):
        return op.op(INT8_MATMUL, xq, xs, xz, wq, wz, ws, _domain=LINEAR_DOMAIN)


def linear_fusions() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([DynamicInt8MatMul.rule()], commute=True)


class NotDequantizable(ValueError):
    """A quantized tensor whose dequantization this reader does not do (the message says why)."""


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """`(q - zero_point) * scale` in float32; scale and zero point each per tensor (one value) or per `axis`."""

    def along_axis(values: np.ndarray, what: str) -> np.ndarray:
        values = np.asarray(values).astype(np.float32)
        if values.size == 1:
            return values.reshape(())
        if values.ndim != 1 or q.ndim == 0 or values.shape[0] != q.shape[axis]:
            raise NotDequantizable(f"{what} of shape {list(values.shape)} does not match axis {axis} of {list(q.shape)}")
        shape = [1] * q.ndim
        shape[axis] = -1
        return values.reshape(shape)

    zero = np.zeros((), np.float32) if zero_point is None else along_axis(zero_point, "zero point")
    return ((q.astype(np.float32) - zero) * along_axis(scale, "scale")).astype(np.float32)


def dequantized_constant(value: ir.Value) -> np.ndarray | None:
    """The float tensor of `DequantizeLinear(constant, constant scale[, constant zero point])`, else None."""
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    inputs = [v.const_value.numpy() if v is not None and v.const_value is not None else None for v in node.inputs]
    if inputs[0] is None or inputs[1] is None or (len(node.inputs) > 2 and node.inputs[2] is not None and inputs[2] is None):
        return None
    if node.attributes.get_int("block_size", 0):
        raise NotDequantizable(f"DequantizeLinear '{node.name}' uses block quantization")
    axis = node.attributes.get_int("axis", 1)
    q = inputs[0]
    return dequantize(q, inputs[1], inputs[2] if len(inputs) > 2 else None, axis % max(q.ndim, 1))


def int8_weight(node: ir.Node) -> np.ndarray:
    """The float weight `(Wq - Wz) * Ws` of an `int8_matmul` call (per tensor or per output column)."""
    wq, wz, ws = (node.inputs[i] for i in (3, 4, 5))
    arrays = []
    for value, what in ((wq, "weight"), (wz, "weight zero point"), (ws, "weight scale")):
        if value is None or value.const_value is None:
            raise NotDequantizable(f"int8 {what} '{value.name if value else None}' is not a constant")
        arrays.append(value.const_value.numpy())
    q, zero, scale = arrays
    if q.ndim != 2:
        raise NotDequantizable(f"int8 weight '{wq.name}' has shape {list(q.shape)}, expected 2-D")
    return dequantize(q, scale, zero, axis=1)

"""The `Linear` sub-pattern in its exported forms, and reading its weights back from a match.

Forms (`kind`): `matmul` (MatMul, then Add of the bias when `bias`), `gemm` (Gemm with or without its
third input, either transB), `int8` (`quantize_dynamic`'s `DynamicQuantizeLinear` + `MatMulInteger` chain,
fused beforehand into one `quweit.linear::int8_matmul` call, then Add of the bias when `bias`), and
`reshape_gemm` / `reshape_int8` (the same between a flattening and an unflattening Reshape, as GPT-2's
Conv1D and OPT write it). Weights given as `DequantizeLinear` of constants (static QDQ) are dequantized.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .quantized import INT8_MATMUL, LINEAR_DOMAIN, NotDequantizable, dequantized_constant, int8_weight

LINEAR_KINDS = ("matmul", "gemm", "reshape_gemm", "int8", "reshape_int8")
#: the op each kind needs in the graph (rules for kinds a graph lacks are not built)
KIND_OPS = {"matmul": ("", "MatMul"), "gemm": ("", "Gemm"), "reshape_gemm": ("", "Gemm"),
            "int8": (LINEAR_DOMAIN, INT8_MATMUL), "reshape_int8": (LINEAR_DOMAIN, INT8_MATMUL)}


def linear(op, x, w, b, shape_in, shape_out, *, kind: str, bias: bool, tag: str, quantized: dict | None = None):
    """Pattern of one Linear; its output value is bound as `{tag}_out` (the MatMul/Gemm/int8 output).

    `quantized` shares the `DynamicQuantizeLinear` of one input between the Linears of one pattern.
    """
    if kind not in LINEAR_KINDS:
        raise ValueError(f"unknown linear kind {kind!r}; expected one of {LINEAR_KINDS}")
    reshaped = kind.startswith("reshape_")
    core = kind.removeprefix("reshape_")
    if reshaped:
        x = op.Reshape(x, shape_in, _allow_other_attributes=True)
    if core == "matmul":
        y = op.MatMul(x, w, _outputs=[f"{tag}_out"])
    elif core == "gemm":
        y = op.Gemm(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=[f"{tag}_out"])
    else:
        cache = {} if quantized is None else quantized
        if id(x) not in cache:
            cache[id(x)] = op.DynamicQuantizeLinear(x, _outputs=3)
        xq, xs, xz = cache[id(x)]
        y = getattr(op, INT8_MATMUL)(xq, xs, xz, w, _domain=LINEAR_DOMAIN, _allow_other_inputs=True, _outputs=[f"{tag}_out"])
    if bias and core != "gemm":
        y = op.Add(y, b)
    return op.Reshape(y, shape_out, _allow_other_attributes=True) if reshaped else y


class NotALinear(Exception):
    """A matched Linear whose weights cannot be read (not constant, odd attributes)."""


def constant(value: ir.Value | None, what: str) -> np.ndarray | None:
    """The tensor of a constant (or of `DequantizeLinear` of constants), or raise `NotALinear`."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is not None:
        return tensor.numpy()
    try:
        array = dequantized_constant(value)
    except NotDequantizable as err:
        raise NotALinear(f"{what} '{value.name}': {err}") from None
    if array is None:
        raise NotALinear(f"{what} '{value.name}' is not a constant (initializer)")
    return array


def read_linear(out: ir.Value, w: ir.Value, b: ir.Value | None, *, kind: str, tag: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`(W [D_in, D_out] float32, bias [D_out] or None)` of a matched Linear, or raise `NotALinear`."""
    node = out.producer()
    if kind.endswith("int8"):
        try:
            weight = int8_weight(node)
        except NotDequantizable as err:
            raise NotALinear(f"{tag}: {err}") from None
    else:
        weight = constant(w, f"{tag} weight")
    if weight.ndim != 2:
        raise NotALinear(f"{tag} weight '{w.name}' has shape {list(weight.shape)}, expected 2-D")
    if kind in ("gemm", "reshape_gemm"):
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise NotALinear(f"{tag} Gemm '{node.name}' has transA/alpha/beta {attrs}, expected 0/1/1")
        if attrs.get("transB", 0):
            weight = weight.T
        b = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant(b, f"{tag} bias")
    if bias is not None:
        bias = np.broadcast_to(bias.reshape(-1) if bias.size > 1 else bias.reshape(()), (weight.shape[1],))
        if bias.shape != (weight.shape[1],):
            raise NotALinear(f"{tag} bias '{b.name}' does not broadcast to [{weight.shape[1]}]")
    return np.ascontiguousarray(weight, dtype=np.float32), (None if bias is None else np.array(bias, np.float32))

"""The `Linear` sub-pattern in its exported forms, and reading its weights back from a match.

Forms (`kind`): `matmul` (MatMul, then Add of the bias when `bias`), `gemm` (Gemm with or without its
third input, either transB), `reshape_gemm` (Gemm between a flattening and an unflattening Reshape, as
GPT-2's Conv1D and OPT write it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

LINEAR_KINDS = ("matmul", "gemm", "reshape_gemm")


def linear(op, x, w, b, shape_in, shape_out, *, kind: str, bias: bool, tag: str):
    """Pattern of one Linear; its output value is bound as `{tag}_out` (the MatMul/Gemm output)."""
    if kind == "matmul":
        y = op.MatMul(x, w, _outputs=[f"{tag}_out"])
        return op.Add(y, b) if bias else y
    if kind == "gemm":
        return op.Gemm(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=[f"{tag}_out"])
    if kind == "reshape_gemm":
        flat = op.Reshape(x, shape_in, _allow_other_attributes=True)
        y = op.Gemm(flat, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=[f"{tag}_out"])
        return op.Reshape(y, shape_out, _allow_other_attributes=True)
    raise ValueError(f"unknown linear kind {kind!r}; expected one of {LINEAR_KINDS}")


class NotALinear(Exception):
    """A matched Linear whose weights cannot be read (not constant, odd attributes)."""


def constant(value: ir.Value | None, what: str) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        raise NotALinear(f"{what} '{value.name}' is not a constant (initializer)")
    return tensor.numpy()


def read_linear(out: ir.Value, w: ir.Value, b: ir.Value | None, *, kind: str, tag: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`(W [D_in, D_out] float32, bias [D_out] or None)` of a matched Linear, or raise `NotALinear`."""
    node = out.producer()
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

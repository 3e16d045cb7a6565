"""ONNX schema of `quweit::WeightlessBlock` v1 with type and shape inference.

Registering the schema lets `onnx.checker` (full_check) and `onnx.shape_inference` understand the op:
the output is `[..., out_features]` float32 with the input's leading (possibly symbolic) dimensions.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, defs, helper

from .errors import WeightlessBlockError
from .params import DOMAIN, OP_TYPE, OP_VERSION, PARAM_DTYPES, PARAM_NAMES

_DOC = "LUT network replacing an MLP; see docs/weightless_block.md (spec revision 1.1)."
_TYPE_NAMES = {"float32": "tensor(float)", "int32": "tensor(int32)", "uint64": "tensor(uint64)"}


def _node_name(ctx) -> str:
    """onnx displays nodes as `node OP[DOMAIN] (NAME)`; the error names just NAME."""
    shown = ctx.get_display_name()
    return shown[shown.rfind("(") + 1 : -1] if shown.endswith(")") and "(" in shown else shown


def _infer(ctx) -> None:
    x_type = ctx.get_input_type(0)
    out_attr = ctx.get_attribute("out_features")
    if out_attr is None:
        raise WeightlessBlockError("out_features", "attribute is missing", node=_node_name(ctx))
    out_features = helper.get_attribute_value(out_attr)
    if x_type is None or not x_type.HasField("tensor_type"):
        return
    if x_type.tensor_type.elem_type not in (0, TensorProto.FLOAT):
        raise WeightlessBlockError(
            "X",
            f"must be float32, got {helper.tensor_dtype_to_np_dtype(x_type.tensor_type.elem_type)}",
            node=_node_name(ctx),
        )
    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.FLOAT
    if x_type.tensor_type.HasField("shape"):
        dims = list(x_type.tensor_type.shape.dim)
        out.tensor_type.shape.SetInParent()
        for dim in dims[:-1]:
            out.tensor_type.shape.dim.add().CopyFrom(dim)
        out.tensor_type.shape.dim.add().dim_value = out_features
    ctx.set_output_type(0, out)


def make_schema() -> defs.OpSchema:
    P = defs.OpSchema.FormalParameter
    inputs = [P("X", "tensor(float)", "activations [..., in_features]")] + [
        P(name, _TYPE_NAMES[str(PARAM_DTYPES[name])], f"parameter '{name}' (spec section 2)")
        for name in PARAM_NAMES
    ]
    A = defs.OpSchema.Attribute
    attributes = [
        A("in_features", defs.OpSchema.AttrType.INT, "D_in", required=True),
        A("out_features", defs.OpSchema.AttrType.INT, "D_out", required=True),
        A("thresholds_per_feature", defs.OpSchema.AttrType.INT, "T", required=True),
        A("lut_inputs", defs.OpSchema.AttrType.INT, "n, address bits per LUT", required=True),
        A("layer_sizes", defs.OpSchema.AttrType.INTS, "LUTs per layer", required=True),
        A("input_bits", defs.OpSchema.AttrType.INT, "B, signed quantized input width", required=True),
    ]
    schema = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        _DOC,
        inputs=inputs,
        outputs=[P("Y", "tensor(float)", "outputs [..., out_features]")],
        attributes=attributes,
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register the schema with onnx once (idempotent)."""
    if defs.has(OP_TYPE, OP_VERSION, DOMAIN):
        return
    defs.register_schema(make_schema())

"""Multiply-accumulates per token of the parts of a model that stay dense (attention projections and
scores, the rest): weight MatMuls/Gemms from their initializers, activation x activation MatMuls (attention
scores) from shapes inferred at the actual input shapes. Elementwise work (norms, softmax, residual adds)
is left out on both sides: it is the same in the original and the converted model and small next to the
MACs (a few per feature against hundreds of MACs per feature)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import shape_inference
from quweit.converter.costs import weight_macs


def activation_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[int, str | None]:
    """MACs per token of MatMuls between two activations at the shapes of `feeds`; (0, reason) if unknown."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(dims, feeds[value.name].shape):
                d.Clear()
                d.dim_value = int(size)
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as err:  # noqa: BLE001  (onnx raises several types for graphs it cannot infer)
        return 0, f"shape inference failed: {err}"
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    constants = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                              for o in n.output}
    tokens = max((int(np.prod(v.shape[:2])) for v in feeds.values() if v.ndim >= 2), default=1)
    total, unknown = 0, 0
    for node in inferred.graph.node:
        if node.op_type != "MatMul" or any(i in constants for i in node.input):
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is None or out is None:
            unknown += 1
            continue
        total += int(np.prod(out)) * a[-1]
    reason = f"{unknown} activation MatMul(s) of unknown shape not counted" if unknown else None
    return total // max(1, tokens), reason


def dense_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict:
    """Per token: weight MACs and activation MACs of the model as it is (blocks excluded)."""
    attention, note = activation_macs(model, feeds)
    counted = ir.serde.deserialize_model(model)  # a view of the proto (the converter counts on onnx-ir)
    return {"weight_macs_per_token": weight_macs(counted), "activation_macs_per_token": attention, "note": note}

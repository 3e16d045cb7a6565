"""The op's schema: the full checker accepts models using it; shape inference keeps symbolic dims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quweit.custom_ops import WeightlessBlockError, make_block_model, random_params


def _params():
    return random_params(np.random.default_rng(3), in_features=6, out_features=5,
                         thresholds_per_feature=4, lut_inputs=6, layer_sizes=(12, 10))


def _shape(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("leading", [("batch", "sequence"), ("n",), (), (0, "s"), (2, 3, 4)])
def test_full_check_and_shape_inference(leading):
    model = make_block_model(_params(), leading)
    # route the block's output through an Identity so its type can only come from inference
    model.graph.node[0].output[0] = "block_out"
    model.graph.node.append(helper.make_node("Identity", ["block_out"], ["Y"]))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (block_out,) = [v for v in inferred.graph.value_info if v.name == "block_out"]
    assert block_out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert _shape(block_out) == [*leading, 5]


def test_shape_inference_rejects_non_float_input():
    model = make_block_model(_params())
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(WeightlessBlockError, match="node 'block': parameter 'X': must be float32, got float64"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)

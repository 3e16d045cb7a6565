"""The ONNX-function decomposition, run by stock onnxruntime, equals the numpy oracle bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from blocks import LEADING_SHAPES, adversarial_inputs, blocks, same_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quweit.custom_ops import DOMAIN, attach_decomposition, evaluate, make_block_model, random_params
from quweit.onnxio import make_session


def run_stock_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = make_session(model, kernel=False, options=options)
    return session.run(None, {"X": x})[0]


def symbolic_leading(shape: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"d{i}" for i in range(len(shape)))


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=blocks(), shape=LEADING_SHAPES, seed=st.integers(0, 2**31))
def test_decomposition_equals_reference(params, shape, seed):
    x = adversarial_inputs(params, shape, seed)
    model = make_block_model(params, symbolic_leading(shape))
    assert same_bits(run_stock_ort(model, x), evaluate(params, x))


@pytest.mark.parametrize("opset", [18, 19, 20, 21])
def test_decomposition_at_later_opsets(opset):
    params = random_params(np.random.default_rng(opset), in_features=9, out_features=4,
                           thresholds_per_feature=3, lut_inputs=5, layer_sizes=(11, 8))
    model = make_block_model(params, ("batch", "sequence"), opset=opset)
    onnx.checker.check_model(model, full_check=True)
    x = adversarial_inputs(params, (2, 3), seed=opset)
    assert same_bits(run_stock_ort(model, x), evaluate(params, x))


def test_attach_decomposition_is_idempotent_and_refuses_old_opsets():
    params = random_params(np.random.default_rng(0), in_features=3, out_features=2,
                           thresholds_per_feature=2, lut_inputs=2)
    model = make_block_model(params)
    attach_decomposition(model)
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, "WeightlessBlock")]
    assert sum(1 for o in model.opset_import if o.domain == DOMAIN) == 1
    with pytest.raises(ValueError, match="opset 17 is below 18"):
        make_block_model(params, opset=17)

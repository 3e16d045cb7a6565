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


# --- spec section 5: what the decomposition guarantees on invalid parameters (stock onnxruntime) -----------
# Each case: (change, expected) with expected "shape" (an onnxruntime error from a failed Reshape: the
# shape contract), "bounds" (an onnxruntime error from Gather's bounds check) or "value" (runs; the result
# is unspecified, except where the spec says more). Run in a child process, so a crash would be seen as one.
INVALID_CASES = {
    "lut_inputs 9": ("attr", "lut_inputs", 9, "shape"),
    "lut_inputs 2^40": ("attr", "lut_inputs", 1 << 40, "shape"),
    "in_features mismatch": ("attr", "in_features", 4, "shape"),
    "out_features mismatch": ("attr", "out_features", 9, "shape"),
    "thresholds_per_feature mismatch": ("attr", "thresholds_per_feature", 1 << 33, "shape"),
    "layer_sizes huge": ("attr", "layer_sizes", [1 << 31, 8], "shape"),
    "layer_sizes wrapping sum": ("attr", "layer_sizes", [1 << 62, 1 << 62, 1 << 62, 1 << 62, 14], "shape"),
    "layer_sizes last not D_out*G": ("attr", "layer_sizes", [7, 7], "shape"),
    "layer_sizes negative": ("attr", "layer_sizes", [20, -6], "shape"),
    "input_bits 1": ("attr", "input_bits", 1, "value"),
    "input_bits 1000": ("attr", "input_bits", 1000, "value"),
    "thresholds wrong shape": ("array", "thresholds", lambda p: p.thresholds[:3], "shape"),
    "input_scale wrong length": ("array", "input_scale", lambda p: p.input_scale[:1], "shape"),
    "mapping one slot": ("array", "mapping", lambda p: p.mapping[:, :1].copy(), "shape"),
    "mapping rank 1": ("array", "mapping", lambda p: p.mapping.reshape(-1), "shape"),
    "tables short": ("array", "tables", lambda p: p.tables[:5], "shape"),
    "encoded_values short": ("array", "encoded_values", lambda p: p.encoded_values[:5], "shape"),
    "bias wrong length": ("array", "bias", lambda p: p.bias[:3], "shape"),
    "output_scale wrong length": ("array", "output_scale", lambda p: p.output_scale[:1], "shape"),
    "mapping beyond the bits": ("mapping", (5, 999), None, "bounds"),
    "mapping below -size": ("mapping", (5, -(1 << 31)), None, "bounds"),
    "mapping -1 (counts from the end)": ("mapping", (5, -1), None, "value"),
    "thresholds unsorted": ("array", "thresholds", lambda p: p.thresholds[:, ::-1].copy(), "value"),
    "thresholds out of range": ("array", "thresholds", lambda p: p.thresholds * 1000, "value"),
    "input_scale NaN": ("array", "input_scale", lambda p: np.full_like(p.input_scale, np.nan), "value"),
    "input_scale 0": ("array", "input_scale", lambda p: np.zeros_like(p.input_scale), "value"),
    "table bits above 2^n": ("array", "tables", lambda p: p.tables | np.uint64(0xFFFF_0000_0000_0000), "high_bits"),
    "accumulator overflow": ("array", "encoded_values", lambda p: np.full_like(p.encoded_values, 2**31 - 1), "value"),
    "output_scale inf": ("array", "output_scale", lambda p: np.full_like(p.output_scale, np.inf), "value"),
    "mapping int64": ("array", "mapping", lambda p: p.mapping.astype(np.int64), "exact"),
}

_INVALID_CHILD = r"""
import json, resource, sys
import numpy as np, onnxruntime as ort
# a safety net for a shared machine: a regression must fail here, not exhaust the host's memory
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
results = {}
x = np.load(sys.argv[2])
for name in json.loads(sys.argv[3]):
    try:
        session = ort.InferenceSession(f"{sys.argv[1]}/{name}.onnx", providers=["CPUExecutionProvider"])
        y = session.run(None, {"X": x})[0]
        np.save(f"{sys.argv[1]}/{name}.npy", y)
        results[name] = "ran"
    except Exception as err:
        results[name] = "error: " + " ".join(str(err).split())
print(json.dumps(results))
"""


def _invalid_model(params, change):
    from onnx import helper, numpy_helper

    kind, name, value, _ = change
    model = make_block_model(params, ("b", "s"))
    node = model.graph.node[0]
    if kind == "attr":
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute(name, value)])
        return model
    if kind == "mapping":
        flat_index, index = name
        array = params.mapping.copy().reshape(-1)
        array[flat_index] = index
        array, name = array.reshape(params.mapping.shape), "mapping"
    else:
        array = value(params)
    tensor = next(t for t in model.graph.initializer if t.name == f"block.{name}")
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))
    return model


def test_invalid_parameters_never_crash_the_decomposition(tmp_path):
    """Spec section 5 (the decomposition): shape contracts fail in a Reshape (never an allocation sized by
    an attribute), out-of-range indices fail Gather's bounds check, invalid values run without a crash;
    table bits above 2^n are never read."""
    import json
    import subprocess
    import sys

    params = random_params(np.random.default_rng(0), in_features=5, out_features=4, thresholds_per_feature=3,
                           lut_inputs=3, layer_sizes=(6, 8))
    for case, change in INVALID_CASES.items():
        onnx.save(_invalid_model(params, change), str(tmp_path / f"{case}.onnx"))
    x = adversarial_inputs(params, (3, 7), seed=1)
    np.save(tmp_path / "x.npy", x)
    child = subprocess.run([sys.executable, "-c", _INVALID_CHILD, str(tmp_path), str(tmp_path / "x.npy"),
                            json.dumps(list(INVALID_CASES))], capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stderr[-3000:]  # a crash (signal) or an abort would show here
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for case, (*_, expected) in INVALID_CASES.items():
        got = results[case]
        if expected == "shape":
            assert got.startswith("error") and ("eshape" in got or "ShapeInferenceError" in got), (case, got)
            assert "alloc" not in got.lower() and "bfc_arena" not in got, (case, got)
        elif expected == "bounds":
            assert got.startswith("error") and "out of data bounds" in got, (case, got)
        else:
            assert got == "ran", (case, got)
            y = np.load(tmp_path / f"{case}.npy")
            assert y.shape == (3, 7, 4) and y.dtype == np.float32, case
            if expected in ("exact", "high_bits"):  # those bits are never read: the valid block's result
                assert same_bits(y, evaluate(params, x)), case


@pytest.mark.parametrize("width", [1, 4, 6])
def test_input_with_wrong_last_axis_is_an_error_not_a_broadcast(width):
    """X's last axis must be D_in (checked per call): a width of 1 would otherwise broadcast silently."""
    params = random_params(np.random.default_rng(0), in_features=5, out_features=3, thresholds_per_feature=2,
                           lut_inputs=3)
    model = make_block_model(params, ("b",))
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_param = "features"  # let onnxruntime accept it
    with pytest.raises(Exception, match="[Rr]eshape"):
        run_stock_ort(model, np.ones((2, width), np.float32))

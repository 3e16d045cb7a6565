"""MLP rules on small hand-written ONNX models: every activation form and Linear form matches, and
attention-like projections, classifier heads and Linear -> LayerNorm -> Linear do not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper
from quweit.converter.convert import replace_mlps
from quweit.converter.detect import find_mlps, prepare
from quweit.onnxio import make_session

D, H = 8, 16

ACTS = {
    "gelu_erf_dynamo": ("h_div = Div(h, c_sqrt2)\n e = Erf(h_div)\n e1 = Add(e, c_one)\n half = Mul(c_half, e1)\n a = Mul(h, half)", "gelu"),
    "gelu_erf_legacy": ("h_div = Div(h, c_sqrt2)\n e = Erf(h_div)\n e1 = Add(c_one, e)\n p = Mul(h, e1)\n a = Mul(p, c_half)", "gelu"),
    "gelu_op": ("a = Gelu(h)", "gelu"),
    "gelu_op_tanh": ('a = Gelu <approximate = "tanh"> (h)', "gelu_tanh"),
    "gelu_tanh": ("hh = Mul(h, c_half)\n p3 = Pow(h, c_three)\n k = Mul(p3, c_gk)\n s = Add(h, k)\n"
                  + " t0 = Mul(s, c_s2pi)\n t = Tanh(t0)\n t1 = Add(t, c_one)\n a = Mul(hh, t1)", "gelu_tanh"),
    "relu": ("a = Relu(h)", "relu"),
    "silu": ("s = Sigmoid(h)\n a = Mul(s, h)", "silu"),
    "quick_gelu": ("k = Mul(c_qg, h)\n s = Sigmoid(k)\n a = Mul(h, s)", "quick_gelu"),
}
CONSTS = ("c_sqrt2 = Constant <value = float {1.4142135}> ()\n c_one = Constant <value = float {1.0}> ()\n"
          " c_half = Constant <value = float {0.5}> ()\n c_three = Constant <value = float {3.0}> ()\n"
          " c_gk = Constant <value = float {0.044715}> ()\n c_s2pi = Constant <value = float {0.7978846}> ()\n"
          " c_qg = Constant <value = float {1.702}> ()\n")


def _model(body: str, weights: dict[str, np.ndarray], opset: int = 20, out_dim: int = D) -> onnx.ModelProto:
    text = f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g (float[batch, seq, {D}] x) => (float[batch, seq, {out_dim}] y) {{
     {CONSTS} {body}
    }}"""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def _w(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def _mlp_body(act: str, linear: str) -> tuple[str, dict]:
    if linear == "matmul_bias":
        up = "m1 = MatMul(x, w1)\n h = Add(b1, m1)"  # legacy order: bias first
        down = "m2 = MatMul(a, w2)\n y = Add(m2, b2)"
        weights = {"w1": _w(D, H), "b1": _w(H), "w2": _w(H, D), "b2": _w(D)}
    elif linear == "matmul":
        up, down = "h = MatMul(x, w1)", "y = MatMul(a, w2)"
        weights = {"w1": _w(D, H), "w2": _w(H, D)}
    else:  # reshape_gemm with transB, as OPT/GPT-2 write it
        up = "xf = Reshape(x, s_in)\n g1 = Gemm <transB = 1> (xf, w1, b1)\n h = Reshape(g1, s_h)"
        down = "af = Reshape(a, s_hin)\n g2 = Gemm <transB = 1> (af, w2, b2)\n y = Reshape(g2, s_out)"
        weights = {"w1": _w(H, D), "b1": _w(H), "w2": _w(D, H), "b2": _w(D),
                   "s_in": np.array([-1, D], np.int64), "s_h": np.array([0, 0, H], np.int64),
                   "s_hin": np.array([-1, H], np.int64), "s_out": np.array([0, 0, D], np.int64)}
    return f"{up}\n {ACTS[act][0]}\n {down}", weights


def _run(model, x):
    return make_session(model, kernel=False).run(None, {"x": x})[0]


@pytest.mark.parametrize("linear", ["matmul_bias", "matmul", "reshape_gemm"])
@pytest.mark.parametrize("act", list(ACTS))
def test_each_activation_and_linear_form_matches_once(act, linear):
    body, weights = _mlp_body(act, linear)
    if linear == "reshape_gemm":
        body = "shp = Shape <end = 2> (x)\n dh = Constant <value = int64[1] {16}> ()\n dd = Constant <value = int64[1] {8}> ()\n" \
               " s_h = Concat <axis = 0> (shp, dh)\n s_out = Concat <axis = 0> (shp, dd)\n" + body
        weights = {k: v for k, v in weights.items() if k not in ("s_h", "s_out")}
    model = _model(body, weights)
    detection = find_mlps(prepare(model))
    assert len(detection.mlps) == 1
    mlp = detection.mlps[0]
    assert (mlp.activation, mlp.family, mlp.shape) == (ACTS[act][1], "linear_act_linear", f"{D}->{H}->{D}")
    # weights come back in [D_in, D_out] layout whatever the exporter wrote
    w1 = weights["w1"].T if linear == "reshape_gemm" else weights["w1"]
    np.testing.assert_array_equal(mlp.w_up, w1)
    converted, report = replace_mlps(model)
    assert report["mlps_replaced"] == 1
    assert [n.op_type for n in converted.graph.node] == ["WeightlessBlock"]
    onnx.checker.check_model(converted, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, D)).astype(np.float32)
    assert _run(converted, x).shape == (2, 3, D)


@pytest.mark.parametrize("act", ["silu", "gelu_erf_dynamo", "gelu_op"])
def test_gated_mlp_matches_as_one(act):
    gate = {
        "silu": "s = Sigmoid(g)\n ga = Mul(g, s)",
        "gelu_erf_dynamo": "gd = Div(g, c_sqrt2)\n e = Erf(gd)\n e1 = Add(e, c_one)\n half = Mul(c_half, e1)\n ga = Mul(g, half)",
        "gelu_op": "ga = Gelu(g)",
    }[act]
    body = f"g = MatMul(x, wg)\n u = MatMul(x, wu)\n {gate}\n p = Mul(ga, u)\n y = MatMul(p, wd)"
    model = _model(body, {"wg": _w(D, H), "wu": _w(D, H, seed=1), "wd": _w(H, D)})
    detection = find_mlps(prepare(model))
    assert [(m.family, m.shape) for m in detection.mlps] == [("gated", f"{D}->{H}->{D} (gated)")]
    converted, _ = replace_mlps(model)
    assert [n.op_type for n in converted.graph.node] == ["WeightlessBlock"]


def test_classifier_head_does_not_match():
    body = "m1 = MatMul(x, w1)\n h = Add(m1, b1)\n a = Relu(h)\n m2 = MatMul(a, w2)\n y = Add(m2, b2)"
    model = _model(body, {"w1": _w(D, H), "b1": _w(H), "w2": _w(H, 3), "b2": _w(3)}, out_dim=3)
    detection = find_mlps(prepare(model))
    assert detection.mlps == []
    assert any("not a residual transformer MLP" in r for _, r in detection.rejected)


def test_linear_layernorm_linear_and_projections_do_not_match():
    body = ("q = MatMul(x, wq)\n k = MatMul(x, wk)\n kt = Transpose <perm = [0, 2, 1]> (k)\n s = MatMul(q, kt)\n"
            " p = Softmax <axis = -1> (s)\n v = MatMul(x, wv)\n o = MatMul(p, v)\n"
            " h = MatMul(o, w1)\n n = LayerNormalization <axis = -1> (h, ln_s, ln_b)\n a = Relu(n)\n y = MatMul(a, w2)")
    weights = {"wq": _w(D, D), "wk": _w(D, D, seed=1), "wv": _w(D, D, seed=2), "w1": _w(D, H),
               "ln_s": np.ones(H, np.float32), "ln_b": np.zeros(H, np.float32), "w2": _w(H, D)}
    detection = find_mlps(prepare(_model(body, weights)))
    assert detection.mlps == []
    # the three projections and both Linears of the LayerNorm chain are explained, the score products are not
    assert len(detection.rejected) == 5


def test_intermediate_read_elsewhere_is_refused():
    body = "h = MatMul(x, w1)\n a = Relu(h)\n y0 = MatMul(a, w2)\n a2 = Slice(a, st, en, ax)\n y = Add(y0, a2)"
    weights = {"w1": _w(D, H), "w2": _w(H, D), "st": np.array([0], np.int64), "en": np.array([D], np.int64),
               "ax": np.array([2], np.int64)}
    detection = find_mlps(prepare(_model(body, weights)))
    assert detection.mlps == []
    assert any("also read by Slice" in r for _, r in detection.rejected)

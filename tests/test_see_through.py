"""What MLP detection looks through, on small hand-written ONNX models: identity-like nodes (removed by
onnxscript's optimizer in `prepare`), fake quantization and dequantized scalars (taken out while the rules
run and put back where still read), and what it must not look through: a requantizing Q/DQ pair, and a
training-mode Dropout, which is named with its fix. Unconverted parts keep every quantization node."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper
from quweit.converter.convert import replace_mlps
from quweit.converter.detect import find_mlps, prepare, rewrite_mlps
from quweit.onnxio import make_session

D, H = 8, 16


def _model(body: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    text = f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[batch, seq, {D}] x) => (float[batch, seq, {D}] y) {{
     {body}
    }}"""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(**extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w1": rng.standard_normal((D, H)).astype(np.float32), "b1": rng.standard_normal(H).astype(np.float32),
            "w2": rng.standard_normal((H, D)).astype(np.float32), "b2": rng.standard_normal(D).astype(np.float32),
            **extra}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model, kernel=False).run(None, {"x": x})[0]


X = np.random.default_rng(1).standard_normal((2, 3, D)).astype(np.float32)
SCALARS = {"ratio": np.array(0.1, np.float32), "no": np.array(False), "yes": np.array(True),
           "shape_h": np.array([0, 0, H], np.int64)}
IDENTITY_LIKE = {
    "Identity": "hi = Identity(h)",
    "Dropout (inference, no training flag)": "hi = Dropout(h, ratio)",
    "Dropout (training_mode=False)": "hi = Dropout(h, ratio, no)",
    "Dropout (ratio 0, training)": "hi = Dropout(h, zero, yes)",
    "Cast to the same type": "hi = Cast <to = 1> (h)",
    "Reshape to the same shape": "hi = Reshape(h, shape_h)",
}


@pytest.mark.parametrize("between", list(IDENTITY_LIKE))
def test_identity_like_nodes_inside_an_mlp_are_seen_through(between):
    body = f"m1 = MatMul(x, w1)\n h = Add(m1, b1)\n {IDENTITY_LIKE[between]}\n a = Relu(hi)\n m2 = MatMul(a, w2)\n y = Add(m2, b2)"
    model = _model(body, _weights(**SCALARS, zero=np.array(0.0, np.float32)))
    detection = find_mlps(prepare(model))
    assert [(m.shape, m.b_down is not None) for m in detection.mlps] == [(f"{D}->{H}->{D}", True)]
    converted, _ = replace_mlps(model)
    assert [n.op_type for n in converted.graph.node] == ["WeightlessBlock"]


def _qdq(v: str, scale: str = "s", zero: str = "z", out: str | None = None) -> str:
    return f"{v}_q = QuantizeLinear({v}, {scale}, {zero})\n {out or v + '_dq'} = DequantizeLinear({v}_q, {scale}, {zero})"


QDQ_WEIGHTS = {"s": np.array(0.05, np.float32), "z": np.array(0, np.int8), "s2": np.array(0.1, np.float32),
               "wq1": np.random.default_rng(2).integers(-100, 100, (D, H)).astype(np.int8),
               "wq2": np.random.default_rng(3).integers(-100, 100, (H, D)).astype(np.int8),
               "ws1": np.full(H, 0.01, np.float32), "ws2": np.array(0.02, np.float32),
               "one_q": np.array(20, np.int8), "half_q": np.array(10, np.int8)}
# a static-QDQ MLP as quantize_static writes it: fake quantization on every activation edge (inside the
# GELU too), int8 weights behind DequantizeLinear (per column for w1), scalars stored as int8 constants
QDQ_MLP = f"""
    {_qdq("x")}
     w1f = DequantizeLinear <axis = 1> (wq1, ws1)
     m1 = MatMul(x_dq, w1f)
     {_qdq("m1")}
     h = Add(m1_dq, b1)
     {_qdq("h")}
     c_sqrt2 = Constant <value = float {{1.4142135}}> ()
     hd = Div(h_dq, c_sqrt2)
     e = Erf(hd)
     {_qdq("e")}
     one = DequantizeLinear(one_q, s)
     e1 = Add(e_dq, one)
     {_qdq("e1")}
     p = Mul(h_dq, e1_dq)
     {_qdq("p")}
     half = DequantizeLinear(half_q, s)
     a = Mul(p_dq, half)
     {_qdq("a", out="a_dq")}
     w2f = DequantizeLinear(wq2, ws2)
     m2 = MatMul(a_dq, w2f)
     {_qdq("m2")}
     mlp = Add(m2_dq, b2)
     {_qdq("mlp")}
     y = Add(mlp_dq, x_dq)"""


def test_static_qdq_mlp_is_found_with_dequantized_weights_and_replaced_whole():
    model = _model(QDQ_MLP, _weights(**QDQ_WEIGHTS))
    prepared = prepare(model)
    (mlp,) = find_mlps(prepared).mlps
    assert (mlp.input, mlp.output, mlp.activation) == ("x", "mlp", "gelu")
    np.testing.assert_array_equal(mlp.w_up, QDQ_WEIGHTS["wq1"].astype(np.float32) * QDQ_WEIGHTS["ws1"])
    np.testing.assert_array_equal(mlp.w_down, QDQ_WEIGHTS["wq2"].astype(np.float32) * QDQ_WEIGHTS["ws2"])
    converted, _ = replace_mlps(model)
    ops = collections.Counter(n.op_type for n in converted.graph.node)
    # left: the block, the residual Add, and the quantization its inputs had (x's pair, the output's pair)
    assert ops == {"WeightlessBlock": 1, "Add": 1, "QuantizeLinear": 2, "DequantizeLinear": 2}
    residual = next(n for n in converted.graph.node if n.op_type == "Add")
    producers = {o: n for n in converted.graph.node for o in n.output}
    assert [producers[i].op_type for i in residual.input] == ["DequantizeLinear", "DequantizeLinear"]
    assert producers[producers[residual.input[0]].input[0]].input[0] == "mlp"  # Q(block output)
    assert _run(converted, X).shape == X.shape


def test_unconverted_quantized_model_keeps_every_node_and_its_output():
    model = _model(QDQ_MLP, _weights(**QDQ_WEIGHTS))
    prepared = prepare(model)
    untouched, count = rewrite_mlps(prepared, {})
    assert count == 0
    # (inlining the fused activation back writes its scalar as a Constant node instead of an initializer)
    ops = [collections.Counter(n.op_type for n in m.graph.node if n.op_type != "Constant") for m in (untouched, prepared)]
    assert ops[0] == ops[1]
    assert np.array_equal(_run(untouched, X), _run(model, X))


def test_requantizing_pair_is_not_looked_through():
    # Q with one scale, DQ with another: a rescaling, not a round trip; the MLP must not match across it
    body = QDQ_MLP.replace("h_dq = DequantizeLinear(h_q, s, z)", "h_dq = DequantizeLinear(h_q, s2, z)")
    assert body != QDQ_MLP
    detection = find_mlps(prepare(_model(body, _weights(**QDQ_WEIGHTS))))
    assert detection.mlps == []
    assert any(f"Linear [{D}, {H}] is not part of" in reason for _, reason in detection.rejected)


def _dropout_mlp(where: str, training: str = "yes", ratio: str = "ratio") -> onnx.ModelProto:
    inside = f"ad = Dropout(a, {ratio}, {training})" if where == "inside" else "ad = Identity(a)"
    after = f"yd = Dropout(mlp, {ratio}, {training})" if where == "after" else "yd = Identity(mlp)"
    body = (f"m1 = MatMul(x, w1)\n h = Add(m1, b1)\n a = Relu(h)\n {inside}\n m2 = MatMul(ad, w2)\n mlp = Add(m2, b2)\n"
            f" {after}\n y = Add(yd, x)")
    return _model(body, _weights(**SCALARS))


def test_training_mode_dropout_inside_an_mlp_is_named_with_the_fix():
    detection = find_mlps(prepare(_dropout_mlp("inside")))
    assert detection.mlps == []
    reasons = [r for _, r in detection.rejected if "training_mode=True" in r]
    assert reasons and all(r.startswith("Dropout '") and "export the model in eval mode" in r for r in reasons)
    assert "eval mode" in detection.no_mlp_message() and "Dropout '" in detection.no_mlp_message()


def test_training_mode_dropout_after_an_mlp_does_not_hide_it_and_stays():
    model = _dropout_mlp("after")
    (mlp,) = find_mlps(prepare(model)).mlps
    assert mlp.output == "mlp"
    converted, report = replace_mlps(model)
    assert report["mlps_replaced"] == 1
    assert [n.op_type for n in converted.graph.node] == ["WeightlessBlock", "Dropout", "Add"]

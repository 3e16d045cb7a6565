"""Every model form users bring (tests/model_forms.py: torch's two exporters, onnxruntime's transformer
optimizer, `quantize_dynamic`, static QDQ quantization), each made from a real export of a tiny
random-weight transformer: every MLP is found and replaced, the converted model runs in stock onnxruntime
(the block's decomposition) and on the kernel with identical results, and the replacement sits exactly
where the MLP sat: with each block swapped for the dense MLP the detector read, the model computes what
the original computed (to float rounding; for quantized models, to the quantization of the MLP's
insides, which the block replaces). Quantized models converted with fitted blocks keep their own output
as well as a float model converted the same way keeps its own.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from model_forms import FORMS, calibration_feeds, dense_stand_in, export_training_mode, make
from models import LAYERS, without_decomposition
from quweit.converter import calibrate
from quweit.converter.cli import main
from quweit.converter.convert import convert
from quweit.converter.costs import linear_weight
from quweit.converter.detect import find_mlps, prepare, rewrite_mlps
from quweit.custom_ops import default_config, random_params
from quweit.onnxio import capture, make_session

#: whole-model output of the dense stand-in vs the original: float forms agree to float rounding;
#: quantized forms differ by the int8 rounding inside the MLPs (the stand-in computes them in float)
FLOAT_ATOL = 1e-4
QUANTIZED_MIN_COSINE = 0.999


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forms")
    cache: dict[str, onnx.ModelProto] = {}
    exports: dict = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            cache[name] = make(FORMS[name], folder, exports)
        return cache[name]

    return get


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _stock(model: onnx.ModelProto) -> ort.InferenceSession:
    return make_session(model, kernel=False)


def _linears(model: onnx.ModelProto, names: bool = False):
    """The Linear layers of `model` (constant weight, float or quantized): their count, or their names."""
    found = [node.name for node in ir.serde.deserialize_model(model).graph if linear_weight(node) is not None]
    return found if names else len(found)


def _random_blocks(mlps) -> dict:
    rng = np.random.default_rng(0)
    blocks = {}
    for mlp in mlps:
        cfg = default_config(mlp.d_in, mlp.d_out)
        blocks[mlp.output] = random_params(rng, in_features=mlp.d_in, out_features=mlp.d_out, lut_inputs=cfg.lut_inputs,
                                           thresholds_per_feature=cfg.thresholds_per_feature,
                                           layer_sizes=cfg.layer_sizes(mlp.d_out), input_bits=cfg.input_bits)
    return blocks


@pytest.mark.parametrize("name", list(FORMS))
def test_every_mlp_found_replaced_exactly_and_runs(made, name):
    form = FORMS[name]
    original = made(name)
    prepared = prepare(original)
    detection = find_mlps(prepared)
    mlps = detection.mlps
    assert len(mlps) == LAYERS, detection.rejected
    assert {(m.activation, m.linear) for m in mlps} == {(form.activation, form.linear)}
    # a bias that onnxruntime moved into SkipLayerNormalization stays there: the block must not add it too
    assert {m.b_down is not None for m in mlps} == {form.down_bias}
    # --explain names every other Linear of the model (attention projections) with its reason
    in_mlps = {n for m in mlps for n in m.nodes}
    explained = {where for where, _ in detection.rejected}
    assert set(_linears(prepared, names=True)) - in_mlps <= explained

    converted, count = rewrite_mlps(prepared, _random_blocks(mlps))
    assert count == LAYERS
    assert sum(n.op_type == "WeightlessBlock" for n in converted.graph.node) == LAYERS
    left = [n.op_type for n in converted.graph.node if n.op_type in form.mlp_ops]
    assert not left, f"MLP ops left after conversion: {left}"
    # every Linear of every MLP is gone (float, int8 or behind a DequantizeLinear alike)
    linears_per_mlp = 2 if mlps[0].w_gate is None else 3
    assert _linears(prepared) - _linears(converted) == linears_per_mlp * LAYERS
    onnx.checker.check_model(converted)

    feeds = calibration_feeds(form.family, 1, seed=7)[0]
    stock = _run(_stock(converted), feeds)
    kernel = _run(make_session(without_decomposition(converted), kernel=True, threads=1), feeds)
    assert stock.shape == kernel.shape and np.isfinite(stock).all()
    assert np.array_equal(stock.view(np.int32), kernel.view(np.int32))

    # the rest of the model is untouched: everything before the first block is bit-identical
    first = mlps[0].input
    upstream = [capture(m, [feeds], [first], kernel=False)[first] for m in (prepared, converted)]
    assert np.array_equal(upstream[0].view(np.int32), upstream[1].view(np.int32))

    # exactness: the dense MLP the detector read, put where the block is, gives the original's output
    expected = _run(_stock(original), feeds)
    got = _run(_stock(dense_stand_in(converted, mlps)), feeds)
    if form.quantized:
        assert calibrate.fidelity([expected.reshape(-1, 32)], [got.reshape(-1, 32)]) >= QUANTIZED_MIN_COSINE
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT_ATOL)


#: fitted blocks (closed form, no training budget), held-out inputs: output cosine of the converted model
#: to the model it was converted from; the float model converted alike reaches about 0.92 (measured)
FIDELITY_FLOOR = 0.85
FIDELITY_SLACK = 0.02


def _fitted_fidelity(model: onnx.ModelProto) -> float:
    rng = np.random.default_rng(0)
    calib = {"input_ids": rng.integers(0, 100, (48, 8)).astype(np.int64), "attention_mask": np.ones((48, 8), np.int64)}
    held_out = [{"input_ids": rng.integers(0, 100, (8, 8)).astype(np.int64), "attention_mask": np.ones((8, 8), np.int64)}]
    converted, report = convert(model, calib=calib, sensitivity=False, progress=False)
    assert report["mlps_replaced"] == LAYERS
    return calibrate.fidelity(calibrate.outputs(model, held_out), calibrate.outputs(converted, held_out))


@pytest.fixture(scope="session")
def float_fidelity(made) -> float:
    return _fitted_fidelity(made("legacy"))


@pytest.mark.parametrize("name", ["int8_dynamic", "qdq_static"])
def test_quantized_model_converted_keeps_its_own_output(made, float_fidelity, name):
    """The converted model is compared with the quantized model's own output (not the float one's)."""
    quantized = _fitted_fidelity(made(name))
    assert quantized >= FIDELITY_FLOOR, quantized
    assert quantized >= float_fidelity - FIDELITY_SLACK, (quantized, float_fidelity)


def test_training_mode_export_names_each_dropout_and_the_fix(tmp_path, capsys):
    model = export_training_mode(tmp_path / "t5_train.onnx")
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(model), "--quiet", "--explain"]) == 3
    captured = capsys.readouterr()
    assert "no MLP found" in captured.err and "training_mode=True" in captured.err
    assert "export the model in eval mode" in captured.err
    # --explain: one line per MLP, naming the MLP's last node and the Dropout inside it
    lines = [line for line in captured.out.splitlines() if "in training mode" in line]
    assert len(lines) == LAYERS and len({line.split(":")[0] for line in lines}) == LAYERS
    assert all(line.strip().split(": ", 1)[1].startswith("Dropout '") for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_a_quantized_input_shared_with_another_linear_stays_for_it(tmp_path):
    """`quantize_dynamic` quantizes an input once for every Linear that reads it: the block replaces the MLP's
    whole int8 chain, and the `DynamicQuantizeLinear` stays for the other Linear, whose output is unchanged."""
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(3)
    d, hidden = 16, 32
    weights = {"w_up": (d, hidden), "w_down": (hidden, d), "w_side": (d, d)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 4, name) for name, shape in weights.items()]
    nodes = [helper.make_node("MatMul", ["x", "w_up"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w_down"], ["m"], name="down"),
             helper.make_node("MatMul", ["x", "w_side"], ["s"], name="side"),
             helper.make_node("Add", ["m", "s"], ["y"], name="sum")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", d]),
                               helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, ["n", d])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    quantized = onnx.load(tmp_path / "q.onnx")
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in quantized.graph.node) == 2  # x (shared), a
    prepared = prepare(quantized)
    (mlp,) = find_mlps(prepared).mlps
    assert mlp.linear == "int8"
    converted, count = rewrite_mlps(prepared, _random_blocks([mlp]))
    assert count == 1
    ops = [n.op_type for n in converted.graph.node]
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulInteger") == 1  # the side Linear's
    feeds = {"x": rng.standard_normal((5, d)).astype(np.float32)}
    expected = _stock(quantized).run(["s"], feeds)[0]
    np.testing.assert_array_equal(_stock(converted).run(["s"], feeds)[0], expected)
    kernel = make_session(without_decomposition(converted), kernel=True, threads=1).run(None, feeds)
    assert np.array_equal(kernel[0].view(np.int32), _stock(converted).run(None, feeds)[0].view(np.int32))

"""`convert`: sequential fitting feeds each block the activations of the model with earlier blocks in
place; local fitting does not; the sensitivity table, layer selection, budget split and report totals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from quweit.converter import calibrate
from quweit.converter.convert import convert, replace_mlps
from quweit.converter.detect import find_mlps, prepare, rewrite_mlps
from quweit.converter.errors import BadInputError, NoMlpError
from quweit.converter.fitting import fit_block
from quweit.onnxio import capture, runs

D, H = 8, 24


def _two_mlps() -> onnx.ModelProto:
    """x -> (x + MLP0(x)) -> (. + MLP1(.)): two residual ReLU MLPs in series, symbolic batch/sequence."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(2):
        w1, w2 = rng.standard_normal((D, H)).astype(np.float32), rng.standard_normal((H, D)).astype(np.float32) / 4
        inits += [numpy_helper.from_array(w1, f"w1_{i}"), numpy_helper.from_array(w2, f"w2_{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w1_{i}"], [f"h{i}"], name=f"up{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"act{i}"),
                  helper.make_node("MatMul", [f"a{i}", f"w2_{i}"], [f"m{i}"], name=f"down{i}"),
                  helper.make_node("Add", [prev, f"m{i}"], [f"r{i}"], name=f"res{i}")]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", D])],
                              [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["b", "s", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _calib(n=40):
    return {"x": np.random.default_rng(3).standard_normal((n, 6, D)).astype(np.float32)}


class _Recording:
    def __init__(self):
        self.calls = []
        self.blocks = []

    def __call__(self, x, y, **kw):
        self.calls.append((x.copy(), y.copy(), kw))
        self.blocks.append(fit_block(x, y, **kw))
        return self.blocks[-1]


def _mean_token_cosine(model: onnx.ModelProto, other: onnx.ModelProto, feeds: list) -> float:
    """Mean cosine of the two models' outputs token by token (onnxruntime, decomposition), in float64."""
    import onnxruntime as ort

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, f.feeds)[0][: f.rows].reshape(-1, D) for f in feeds]).astype(np.float64)

    a, b = run(model), run(other)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _dense(mlp, x):
    return np.maximum(x @ mlp.w_up, 0) @ mlp.w_down


def test_sequential_fit_sees_inputs_produced_by_earlier_blocks():
    model, calib = _two_mlps(), _calib()
    fit = _Recording()
    converted, report = convert(model, calib=calib, sensitivity=False, progress=False, fit=fit)
    assert report["mlps_replaced"] == 2 and len(fit.calls) == 2
    prepared = prepare(model)
    mlps = find_mlps(prepared).mlps
    fit_feeds, _ = calibrate.split(prepared, calib, 16)
    original = capture(prepared, fit_feeds, [mlps[1].input], kernel=False)[mlps[1].input]
    first_block = fit.calls[0]
    np.testing.assert_array_equal(first_block[0], capture(prepared, fit_feeds, [mlps[0].input])[mlps[0].input])
    x1, y1, _ = fit.calls[1]
    assert x1.shape == original.shape and not np.allclose(x1, original)  # block 0 changed what MLP 1 sees
    with_block0, _ = rewrite_mlps(prepared, {mlps[0].output: read_first_block(converted)})
    np.testing.assert_array_equal(x1, capture(with_block0, fit_feeds, [mlps[1].input])[mlps[1].input])
    np.testing.assert_allclose(y1, _dense(mlps[1], x1), rtol=1e-4, atol=1e-4)  # targets: the MLP on those inputs


def read_first_block(converted):
    from quweit.custom_ops import read_blocks

    return read_blocks(converted)[0]


def test_local_fit_uses_the_original_activations_and_fills_the_sensitivity_table():
    model, calib = _two_mlps(), _calib()
    fit = _Recording()
    _, report = convert(model, calib=calib, sequential=False, progress=False, fit=fit)
    prepared = prepare(model)
    mlps = find_mlps(prepared).mlps
    fit_feeds, _ = calibrate.split(prepared, calib, 16)
    original = capture(prepared, fit_feeds, [m.input for m in mlps])
    assert len(fit.calls) == 2
    for (x, _, _), mlp in zip(fit.calls, mlps):
        np.testing.assert_array_equal(x, original[mlp.input])
    # each 'alone' score: the model with only that MLP's block in place against the original, on the
    # held-out batches, recomputed here; the total: the model with both blocks
    _, held_out = calibrate.split(prepared, calib, 16)
    for row, mlp, block in zip(report["mlps"], mlps, fit.blocks):
        only, _ = rewrite_mlps(prepared, {mlp.output: block})
        expected = _mean_token_cosine(prepared, only, held_out)
        assert row["fidelity_alone"] == pytest.approx(expected, abs=1e-9), row
        assert expected < 0.9999  # a fitted block is not the MLP: the score measures something
    both, _ = rewrite_mlps(prepared, {m.output: b for m, b in zip(mlps, fit.blocks)})
    assert report["fidelity"] == pytest.approx(_mean_token_cosine(prepared, both, held_out), abs=1e-9)


def test_budget_is_split_over_all_fits_and_layers_pick_mlps():
    fit = _Recording()
    _, report = convert(_two_mlps(), calib=_calib(), layers="1", budget_seconds=3.0, progress=False, fit=fit)
    assert [row["replaced"] for row in report["mlps"]] == [False, True]
    assert report["mlps"][0]["reason"] == "not selected"
    assert {call[2]["budget_seconds"] for call in fit.calls} == {3.0 / 4}  # 2 local + up to 2 sequential fits


def test_auto_respects_the_floor_and_orders_by_sensitivity():
    _, everything = convert(_two_mlps(), calib=_calib(), layers="auto", fidelity_floor=-1.0, progress=False)
    assert everything["mlps_replaced"] == 2
    _, nothing = convert(_two_mlps(), calib=_calib(), layers="auto", fidelity_floor=1.5, progress=False)
    assert nothing["mlps_replaced"] == 0 and nothing["fidelity"] == 1.0


def test_input_model_is_not_modified_and_totals_add_up():
    model = _two_mlps()
    before = model.SerializeToString()
    converted, report = convert(model, calib=_calib(), progress=False, sensitivity=False)
    assert model.SerializeToString() == before
    from quweit.custom_ops import read_blocks

    blocks = read_blocks(converted)
    assert report["macs_before"] == 2 * 2 * D * H
    assert report["macs_after"] == sum(b.in_features + b.out_features for b in blocks)
    assert report["mult_share_removed"] == pytest.approx(1 - report["macs_after"] / report["macs_before"])


def test_replace_mlps_without_fitting_uses_given_blocks():
    from quweit.custom_ops import random_params

    rng = np.random.default_rng(5)
    chosen = []

    def params_for(mlp):
        chosen.append(mlp.output)
        return random_params(rng, in_features=D, out_features=D, thresholds_per_feature=2, lut_inputs=3) if len(chosen) == 2 else None

    converted, report = replace_mlps(_two_mlps(), params_for)
    assert (report["mlps_found"], report["mlps_replaced"]) == (2, 1)
    assert sum(n.domain == "quweit" for n in converted.graph.node) == 1


def test_errors():
    plain = _two_mlps()
    del plain.graph.node[:]
    plain.graph.node.extend([helper.make_node("Relu", ["x"], ["r1"])])
    with pytest.raises(NoMlpError, match="no MLP"):
        convert(plain, calib=_calib(), progress=False)
    with pytest.raises(BadInputError, match="missing"):
        convert(_two_mlps(), calib={"y": np.zeros((2, 3, D), np.float32)}, progress=False)
    with pytest.raises(BadInputError, match="indices"):
        convert(_two_mlps(), calib=_calib(), layers="0,9", progress=False)


def test_models_beyond_the_protobuf_limit_run_without_one_proto(monkeypatch):
    """A > 2 GiB model reaches onnxruntime without being serialized whole (limits lowered here)."""
    from quweit.onnxio import session

    model = _two_mlps()
    feeds = runs(model, _calib(), 8)
    expected = calibrate.outputs(model, feeds)
    before = model.SerializeToString()
    monkeypatch.setattr(session, "PROTOBUF_LIMIT", 16)
    monkeypatch.setattr(session, "HANDOVER_MIN_BYTES", 16)
    for a, b in zip(expected, calibrate.outputs(model, feeds)):
        np.testing.assert_array_equal(a, b)
    assert model.SerializeToString() == before


def _equal_norms() -> onnx.ModelProto:
    """x -> LayerNorm(g0, b0) -> LayerNorm(g1, b1) -> Add(tied): g0 == g1 (ones) and b0 == b1 (zeros), as in an
    untrained model, are separate initializers; `tied` is one initializer read by two nodes."""
    ones, zeros = np.ones(D, np.float32), np.zeros(D, np.float32)
    inits = [numpy_helper.from_array(v, n) for v, n in ((ones, "g0"), (zeros, "b0"), (ones.copy(), "g1"),
                                                        (zeros.copy(), "b1"), (ones * 2, "tied"))]
    nodes = [helper.make_node("LayerNormalization", ["x", "g0", "b0"], ["n0"], name="norm0"),
             helper.make_node("Add", ["n0", "tied"], ["a0"], name="add0"),
             helper.make_node("LayerNormalization", ["a0", "g1", "b1"], ["n1"], name="norm1"),
             helper.make_node("Add", ["n1", "tied"], ["y"], name="add1")]
    graph = helper.make_graph(nodes, "norms", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", D])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_prepare_keeps_equal_initializers_apart_and_shared_ones_shared():
    prepared = prepare(_equal_norms())
    reads = {node.name: list(node.input[1:]) for node in prepared.graph.node}
    values = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    assert reads["norm0"] == ["g0", "b0"] and reads["norm1"] == ["g1", "b1"]  # not merged into one pair
    assert reads["add0"] == reads["add1"] == ["tied"]
    np.testing.assert_array_equal(values["g1"], np.ones(D, np.float32))
    x = np.random.default_rng(0).standard_normal((5, D)).astype(np.float32)
    np.testing.assert_allclose(calibrate.outputs(prepared, [{"x": x}])[0],
                               calibrate.outputs(_equal_norms(), [{"x": x}])[0], rtol=0, atol=0)

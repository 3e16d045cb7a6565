"""The quality recipe: low-rank bypass (fit, rewrite, cost, training), error weights from the norm after an
MLP, per-block reconstruction, and `convert(recipe=...)` with end-to-end distillation."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from quweit.converter.bypass import BYPASS_MARK, LowRankBypass, Replacement, fit_bypass
from quweit.converter.cli import main as convert_main
from quweit.converter.closed_form import closed_form_params
from quweit.converter.convert import convert
from quweit.converter.detect import find_mlps, prepare, rewrite_mlps
from quweit.converter.distill import Recipe
from quweit.converter.onnx_torch import OnnxGraphModule
from quweit.converter.reconstruct import error_weights, fit_replacement, norm_after, weighted_error
from quweit.custom_ops import BlockConfig, evaluate, read_blocks

D, H = 8, 24
SMALL = BlockConfig(lut_inputs=4, thresholds_per_feature=4, luts_per_output=2)


def _model(norm: bool = True) -> onnx.ModelProto:
    """x -> LN(x + MLP0(x)) -> LN(. + MLP1(.)) (post-norm, as BERT), or without the norms."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(2):
        w1, w2 = rng.standard_normal((D, H)).astype(np.float32), rng.standard_normal((H, D)).astype(np.float32) / 4
        gamma = np.linspace(0.5, 2.0, D).astype(np.float32)
        inits += [numpy_helper.from_array(w1, f"w1_{i}"), numpy_helper.from_array(w2, f"w2_{i}"),
                  numpy_helper.from_array(gamma, f"g{i}"), numpy_helper.from_array(np.zeros(D, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w1_{i}"], [f"h{i}"], name=f"up{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"act{i}"),
                  helper.make_node("MatMul", [f"a{i}", f"w2_{i}"], [f"m{i}"], name=f"down{i}"),
                  helper.make_node("Add", [prev, f"m{i}"], [f"r{i}"], name=f"res{i}")]
        if norm:
            nodes.append(helper.make_node("LayerNormalization", [f"r{i}", f"g{i}", f"b{i}"], [f"n{i}"], name=f"ln{i}",
                                          axis=-1))
        prev = f"n{i}" if norm else f"r{i}"
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", D])],
                              [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["b", "s", D])],
                              inits if norm else [t for t in inits if t.name[0] == "w"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _calib(n=48):
    return {"x": np.random.default_rng(3).standard_normal((n, 6, D)).astype(np.float32)}


def test_bypass_fit_recovers_a_low_rank_map_and_not_with_less_rank():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12))
    a, b = rng.standard_normal((12, 3)), rng.standard_normal((3, 10))
    y = x @ a @ b + 0.5
    exact = fit_bypass(x, y, 3)
    assert exact.rank == 3 and exact.macs == 12 * 3 + 3 * 10
    assert np.abs(exact(x) - y).max() < 1e-2
    assert np.abs(fit_bypass(x, y, 2)(x) - y).max() > 0.1


def test_bypass_weights_decide_which_outputs_the_rank_serves():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6))
    y = np.stack([10 * x[:, 0], x[:, 1]], axis=1)  # output 0 has the larger spread
    heavy_first = fit_bypass(x, y, 1)
    heavy_second = fit_bypass(x, y, 1, weights=np.array([0.01, 1.0]))
    assert np.abs(heavy_first(x)[:, 0] - y[:, 0]).max() < 0.05  # unweighted: the big output wins
    assert np.abs(heavy_second(x)[:, 1] - y[:, 1]).max() < 0.05  # weighted: the small one does
    assert np.abs(heavy_second(x)[:, 1] - y[:, 1]).max() < np.abs(heavy_first(x)[:, 1] - y[:, 1]).max()


def test_rewrite_with_bypass_runs_block_plus_matmuls_and_counts_them():
    prepared = prepare(_model())
    mlps = find_mlps(prepared).mlps
    x = np.random.default_rng(2).standard_normal((64, D)).astype(np.float32)
    block = closed_form_params(x, x[:, ::-1].copy(), SMALL)
    rng = np.random.default_rng(5)
    bypass = LowRankBypass(rng.standard_normal((D, 2)).astype(np.float32), rng.standard_normal((2, D)).astype(np.float32),
                           rng.standard_normal(D).astype(np.float32))
    converted, count = rewrite_mlps(prepared, {mlps[0].output: Replacement(block, bypass)})
    assert count == 1
    assert [n.name for n in converted.graph.node if n.domain == "quweit"] == [f"{mlps[0].output}/WeightlessBlock"]
    assert sum(BYPASS_MARK in t.name for t in converted.graph.initializer) == 3
    probe = onnx.ModelProto()
    probe.CopyFrom(converted)
    probe.graph.output.append(helper.make_empty_tensor_value_info(mlps[0].output))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([mlps[0].output], {"x": x[None]})[0][0]
    np.testing.assert_allclose(got, evaluate(block, x) + bypass(x), rtol=1e-5, atol=1e-5)
    _, report = convert(_model(), calib=_calib(), sensitivity=False, progress=False,
                        recipe=Recipe(bypass_rank=2, reconstruct_steps=0))
    _, plain = convert(_model(), calib=_calib(), sensitivity=False, progress=False)
    assert report["bypass_macs"] == 2 * (2 * D * 2)
    assert report["macs_after"] - plain["macs_after"] == report["bypass_macs"]


def test_norm_after_finds_the_layernorm_scale_and_weights_follow_it():
    prepared = prepare(_model())
    mlp = find_mlps(prepared).mlps[0]
    norm = norm_after(prepared, mlp.output)
    assert norm is not None and norm.input.startswith("r")
    np.testing.assert_allclose(norm.scale, np.linspace(0.5, 2.0, D), rtol=1e-6)
    y = np.random.default_rng(0).standard_normal((10, D)).astype(np.float32)
    spread = np.random.default_rng(1).standard_normal((10, D)).astype(np.float32) * np.arange(1, 11)[:, None]
    w = error_weights(y, norm, spread)
    np.testing.assert_allclose(w, norm.scale[None] / spread.std(-1, keepdims=True), rtol=1e-5)
    bare = prepare(_model(norm=False))
    assert norm_after(bare, find_mlps(bare).mlps[0].output) is None
    np.testing.assert_allclose(error_weights(y, None, None)[0], 1 / y.std(0), rtol=1e-5)


def test_reconstruction_by_gradient_uses_each_tokens_weight():
    """Tokens of small spread (weights up to 30x larger, as after a LayerNorm) count for more in the
    gradient steps than in the closed form, which weights outputs by their mean weight only."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, D)).astype(np.float32)
    y = (np.maximum(x @ rng.standard_normal((D, H)), 0) @ rng.standard_normal((H, D)) / 4).astype(np.float32)
    w = np.repeat(np.where(x[:, :1] > 1.0, 30.0, 1.0), D, axis=1).astype(np.float32)
    start = fit_replacement(x, y, w, config=SMALL, rank=2, steps=0)
    trained = fit_replacement(x, y, w, config=SMALL, rank=2, steps=300, batch_size=512, bypass_lr=1e-2)
    assert weighted_error(trained, x, y, w) < 0.8 * weighted_error(start, x, y, w)


def test_convert_with_recipe_distils_and_keeps_more_than_fitting_alone():
    model, calib = _model(), _calib(64)
    _, plain = convert(model, calib=calib, sensitivity=False, progress=False)
    converted, report = convert(model, calib=calib, sensitivity=False, progress=False,
                                recipe=Recipe(bypass_rank=4, reconstruct_steps=30, distill_steps=30, distill_batch=8))
    assert report["mlps_replaced"] == 2 and report["distillation"]["steps"] == 30
    assert report["fidelity"] > plain["fidelity"]
    assert len(read_blocks(converted)) == 2
    graph = OnnxGraphModule(converted)  # bypasses train with the blocks, the other weights stay frozen
    assert len(graph.bypass_keys) == 6 and len(graph.dense) == 6


def test_distillation_stops_when_its_time_or_the_conversions_is_spent():
    """`distill_seconds` ends the steps early; `total_seconds` gives distillation only what fitting left (none
    here: the conversion's whole budget is spent before it starts)."""
    model, calib = _model(), _calib(64)
    recipe = Recipe(bypass_rank=2, reconstruct_steps=2, distill_steps=100000, distill_batch=8)
    _, timed = convert(model, calib=calib, sensitivity=False, progress=False,
                       recipe=dataclasses.replace(recipe, distill_seconds=1.0))
    assert 0 < timed["distillation"]["steps"] < 100000 and timed["distillation"]["seconds"] < 30
    _, spent = convert(model, calib=calib, sensitivity=False, progress=False,
                       recipe=dataclasses.replace(recipe, total_seconds=1e-3))
    assert spent["distillation"]["steps"] == 0 and spent["distillation"]["budget_seconds"] == 0.0


def test_cli_distill_flags_and_bad_values(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    np.savez(tmp_path / "c.npz", **_calib(32))
    code = convert_main([str(path), "--calib", str(tmp_path / "c.npz"), "--bypass-rank", "2", "--distill", "5",
                         "--data", str(tmp_path / "c.npz"), "--no-sensitivity", "--quiet",
                         "--report", str(tmp_path / "r.json")])
    assert code == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["recipe"]["bypass_rank"] == 2 and report["distillation"]["steps"] == 5
    assert report["distillation"]["samples"] == 32
    assert convert_main([str(path), "--bypass-rank", "-1", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "--bypass-rank -1: must be >= 0" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", y=np.zeros((3, 6, D), np.float32))
    assert convert_main([str(path), "--calib", str(tmp_path / "c.npz"), "--distill", "2", "--data",
                         str(tmp_path / "bad.npz"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_recipe_defaults_and_overrides():
    from quweit.converter.cli import EXAMPLE_RECIPE, EXAMPLE_SECONDS, _parser, _recipe

    assert _recipe(_parser().parse_args(["m.onnx"])) is None
    assert _recipe(_parser().parse_args(["--example", "minilm"])) == dataclasses.replace(
        EXAMPLE_RECIPE, total_seconds=EXAMPLE_SECONDS)
    tuned = _recipe(_parser().parse_args(["--example", "minilm", "--distill", "7", "--no-train-dense"]))
    assert tuned.distill_steps == 7 and not tuned.train_dense and tuned.bypass_rank == EXAMPLE_RECIPE.bypass_rank
    plain = _recipe(_parser().parse_args(["m.onnx", "--bypass-rank", "16"]))
    assert plain.bypass_rank == 16 and plain.reconstruct_steps == 0 and plain.distill_steps == 0


def test_warmup_raises_every_rate_linearly(monkeypatch):
    import torch
    from quweit.converter.finetune import FinetuneOptions, Teacher, finetune

    model = _model()
    converted, _ = convert(model, calib=_calib(16), sensitivity=False, progress=False,
                           recipe=Recipe(bypass_rank=2, reconstruct_steps=0))
    seen = []
    step = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    options = FinetuneOptions(steps=4, batch_size=4, lr=0.04, value_lr=0.02, bypass_lr=0.01, warmup_steps=2)
    finetune(converted, _calib(16), teacher=Teacher(prepare(model)), options=options, progress=False)
    assert seen == [[0.02, 0.01, 0.005], [0.04, 0.02, 0.01], [0.04, 0.02, 0.01], [0.04, 0.02, 0.01]]


def test_hidden_states_are_the_norm_outputs_after_each_block_but_not_the_model_output():
    from quweit.converter.distill import hidden_states

    model, calib = _model(), _calib(32)
    converted, _ = convert(model, calib=calib, sensitivity=False, progress=False,
                           recipe=Recipe(bypass_rank=2, reconstruct_steps=2))
    assert hidden_states(converted, model) == ["n0"]  # n1 is the output: the output loss holds it


def test_hidden_state_loss_adds_each_matched_value_and_is_zero_for_the_teacher_itself():
    import torch
    from quweit.converter.finetune import Target, Teacher

    model, feeds = _model(), _calib(4)
    target = Target(Teacher(model).with_inner(["n0"]), ["n0"], hidden_weight=0.5)
    target.measure(feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(["n1"], feeds)[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([helper.make_empty_tensor_value_info("n0")])
    n1, n0 = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    exact = target.loss(torch.from_numpy(out), {"n0": torch.from_numpy(n0)}, feeds, None, 1.0)
    assert float(exact) < 1e-10
    off = torch.from_numpy(n0) + 1.0  # every element off by one: the term is 1 / var(n0), weighted
    loss = target.loss(torch.from_numpy(out), {"n0": off}, feeds, None, 1.0)
    assert np.isclose(float(loss), 0.5 / np.var(n0, dtype=np.float64), rtol=1e-4)


def test_distillation_with_hidden_states_trains_and_a_missing_name_is_refused(tmp_path):
    import pytest
    from quweit.converter.finetune import FinetuneError, FinetuneOptions, Teacher, finetune

    model, calib = _model(), _calib(32)
    start, _ = convert(model, calib=calib, sensitivity=False, progress=False,
                       recipe=Recipe(bypass_rank=2, reconstruct_steps=2))
    _, report = convert(model, calib=calib, sensitivity=False, progress=False,
                        recipe=Recipe(bypass_rank=2, reconstruct_steps=2, distill_steps=20, distill_batch=8,
                                      hidden_weight=1.0))
    assert report["distillation"]["steps"] == 20 and report["recipe"]["hidden_weight"] == 1.0
    with pytest.raises(FinetuneError, match="no values named"):
        finetune(start, calib, teacher=Teacher(model),
                 options=FinetuneOptions(steps=1, hidden=("nowhere",), hidden_weight=1.0), progress=False)

"""`quweit-compile`: outputs, verification verdicts and exit codes; bad input leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hw_support import block, build_tvm, same_bits
from onnx import TensorProto, helper, numpy_helper
from quweit.custom_ops import evaluate, make_block_model, random_params
from quweit.hwbackend import cli, simulate, vectors
from quweit.hwbackend.compile import blocks_only_model
from quweit.onnxio import save_model


def _chain(path):
    """Two blocks in a row (block_1 -> Relu -> block_2) saved to `path`."""
    first, second = block(31, n=6, layers=2, d_in=4, d_out=5), block(32, n=4, layers=1, d_in=5, d_out=3)
    from quweit.custom_ops import attach_decomposition, make_block_node

    node1, init1 = make_block_node(first, "X", "a", prefix="b1.", name="block_1")
    node2, init2 = make_block_node(second, "r", "Y", prefix="b2.", name="block_2")
    graph = helper.make_graph(
        [node1, helper.make_node("Relu", ["a"], ["r"]), node2], "chain",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "sequence", 3])],
        initializer=[*init1, *init2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    save_model(attach_decomposition(model), path)
    return first, second


def test_compile_and_verify_two_blocks(tmp_path, capsys):
    first, second = _chain(tmp_path / "chain.quweit.onnx")
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "chain.quweit.onnx"), "-o", str(out), "--verify", "--pipeline"]) == 0
    printed = capsys.readouterr().out
    assert "block_1" in printed and "block_2" in printed and "verified: 2 block(s)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["verified"] is True and report["library_scope"] == "model"
    for entry in report["blocks"]:
        assert entry["simulation"]["passed"] and entry["simulation"]["vectors"] >= 1000
        assert entry["real_vectors"] == 2 * 64 and entry["latency_cycles"] == len(entry["layer_sizes"]) + 2
        for suffix in (".v", "_tb.v", "_in.hex", "_expected.hex"):
            assert (out / "verilog" / f"{entry['module']}{suffix}").is_file()
    assert (out / "verilog" / "quweit_top.v").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    # the exported TVM library runs the whole model bit-exactly
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    x = (np.random.default_rng(0).standard_normal((2, 3, 4)) * 20).astype(np.float32)
    want = evaluate(second, np.maximum(evaluate(first, x), 0))
    assert same_bits(vm["main"](tvm.runtime.tensor(x)).numpy(), want)


def test_mismatch_exits_1_naming_block_vector_output(tmp_path, monkeypatch, capsys):
    params = block(41, n=3, layers=1)
    save_model(make_block_model(params), tmp_path / "m.onnx")
    real_core = vectors.integer_core

    def off_by_one(p, q):  # the expected file is wrong at vector 5, output 1
        acc = real_core(p, q)
        acc[5, 1] += 1
        return acc

    monkeypatch.setattr(vectors, "integer_core", off_by_one)
    assert cli.main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--verify", "--target", "verilog"]) == 1
    err = capsys.readouterr().err
    assert "MISMATCH block block" in err and "vector 5 output 1" in err and "FAILED" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verified"] is False and report["blocks"][0]["simulation"]["mismatches"] == 1


def _dense_model(path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "dense",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _wide_model(path):
    params = random_params(np.random.default_rng(0), in_features=8193, out_features=1, thresholds_per_feature=1,
                           lut_inputs=2)
    save_model(make_block_model(params), path)


@pytest.mark.parametrize("case,needle", [
    ("no_blocks", "holds no quweit::WeightlessBlock"),
    ("too_wide", "q input bus (in_features * input_bits) is 65544"),
    ("no_simulator", "needs 'iverilog' on PATH"),
    ("missing_file", "no such file"),
    ("bad_block", "parameter 'mapping'"),
])
def test_bad_input_exits_2_and_writes_nothing(case, needle, tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    if case == "no_blocks":
        _dense_model(model)
    elif case == "too_wide":
        _wide_model(model)
    elif case == "bad_block":
        onnx_model = make_block_model(block(1, n=2, layers=1))
        mapping = next(t for t in onnx_model.graph.initializer if t.name.endswith("mapping"))
        bad = numpy_helper.to_array(mapping).copy()
        bad[0, 0] = 10_000
        mapping.CopyFrom(numpy_helper.from_array(bad, mapping.name))
        save_model(onnx_model, model)
    else:
        save_model(make_block_model(block(1, n=2, layers=1)), model)
    if case == "no_simulator":
        monkeypatch.setattr(simulate.shutil, "which", lambda tool: None)
    target = tmp_path / ("absent.onnx" if case == "missing_file" else "m.onnx")
    assert cli.main([str(target), "-o", str(tmp_path / "out"), "--verify"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_to_clobber_without_force(tmp_path, capsys):
    save_model(make_block_model(block(2, n=2, layers=1)), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main([str(tmp_path / "m.onnx"), "-o", str(out), "--target", "c"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert cli.main([str(tmp_path / "m.onnx"), "-o", str(out), "--target", "c", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.so").is_file()


def test_blocks_only_library_matches_reference(tmp_path):
    """The fallback TVM compiles when its importer cannot convert the rest of a model."""
    import tvm
    from quweit.hwbackend.frontend import from_onnx
    from quweit.hwbackend.patterns import partition_for_quweit
    from tvm import relax

    blocks = [block(51, n=5, layers=2), block(52, n=2, layers=1, d_in=3)]
    mod = relax.transform.RunCodegen()(partition_for_quweit(from_onnx(blocks_only_model(blocks))))
    vm = build_tvm(mod, tmp_path, "blocks")
    xs = [(np.random.default_rng(k).standard_normal((7, p.in_features)) * 9).astype(np.float32)
          for k, p in enumerate(blocks)]
    outs = vm["main"](*[tvm.runtime.tensor(x) for x in xs])
    for params, x, y in zip(blocks, xs, outs):
        assert same_bits(y.numpy(), evaluate(params, x))


def test_report_on_a_small_block(tmp_path, monkeypatch, capsys):
    """--report: every block gets synthesis counts per stage, a passing gate-level simulation, Fmax from
    place and route, toggles and energy against the dense baseline; the JSON, table and plot are written."""
    monkeypatch.setenv("QUWEIT_CACHE", str(tmp_path / "cache"))
    params = random_params(np.random.default_rng(12), in_features=6, out_features=3, thresholds_per_feature=3,
                           lut_inputs=6, group_size=2, input_bits=6)
    save_model(make_block_model(params), tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "m.onnx"), "-o", str(out), "--report", "--target", "verilog", "--vectors", "50",
                     "--quiet"]) == 0
    assert "model_energy_ratio" in capsys.readouterr().out
    hw = json.loads((out / "hardware.json").read_text())
    [b] = hw["blocks"]
    assert b["gate_level_simulation"]["passed"] and b["gate_level_simulation"]["vectors"] == 2 * 64 + 50
    assert b["timing"]["placed"] and b["timing"]["fmax_mhz"] > 0
    assert set(b["xc7"]["stages"]) == {"thermometer", "layer0", "sum"}
    assert hw["lut6_per_model_lut"] == b["xc7"]["lut"] / 6 == pytest.approx(sum(hw["lut6_per_model_lut_split"].values()))
    assert b["baseline"]["macs_per_token"] == 6 * 24 + 24 * 3 and b["baseline"]["mac_unit"]["exact"]
    assert b["activity"]["toggles_per_token"] > 0 and b["block_energy_ratio"] > 1
    assert hw["block_energy_ratio"] == pytest.approx(b["block_energy_ratio"])
    assert hw["energy_model"]["pj_per_toggle"] > 0 and "Horowitz" in hw["energy_model"]["source"]
    assert (out / "hardware.png").stat().st_size > 0 and "whole model" in (out / "hardware.txt").read_text()

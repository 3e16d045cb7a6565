"""`quweit-convert` end to end on a small model: exit codes with real bad inputs, no output after any
failure, the input never modified, the table/JSON report, external data in and out, --calib."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from quweit.converter.cli import main
from quweit.custom_ops import read_blocks
from quweit.onnxio import load_model, make_session, save_model, write_npz

D, H = 8, 16


def _mlp_model(path, *, external: bool = False, opset: int = 18, with_mlp: bool = True):
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((D, H)).astype(np.float32), rng.standard_normal((H, D)).astype(np.float32)
    wq = rng.standard_normal((D, D)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj")]
    if with_mlp:
        nodes += [helper.make_node("MatMul", ["q", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["a"], name="act"),
                  helper.make_node("MatMul", ["a", "w2"], ["m"], name="down"), helper.make_node("Add", ["q", "m"], ["y"], name="res")]
    else:
        nodes += [helper.make_node("Relu", ["q"], ["y"], name="act")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq", D])],
        [numpy_helper.from_array(a, n) for n, a in (("wq", wq), ("w1", w1), ("w2", w2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.save_model(model, str(path), save_as_external_data=external, location=path.name + ".data", size_threshold=0)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _calib(path, n=24):
    write_npz(path, {"x": np.random.default_rng(1).standard_normal((n, 5, D)).astype(np.float32)})
    return path


def test_converts_with_table_report_and_untouched_input(tmp_path, capsys):
    model = _mlp_model(tmp_path / "m.onnx")
    before = _digest(model)
    code = main([str(model), "--calib", str(_calib(tmp_path / "c.npz")), "--report", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "replaced 1/1 MLPs" in out and "share of the model's multiplications removed" in out
    assert _digest(model) == before
    report = json.loads((tmp_path / "r.json").read_text())
    assert {k: report[k] for k in ("mlps_found", "mlps_replaced", "macs_before", "macs_after")} == {
        "mlps_found": 1, "mlps_replaced": 1, "macs_before": D * D + 2 * D * H, "macs_after": D * D + 2 * D}
    assert "fidelity_alone" in report["mlps"][0]
    converted = load_model(tmp_path / "m.quweit.onnx")
    (block,) = read_blocks(converted)
    assert report["params_before"] == D * D + 2 * D * H
    assert report["params_after"] == D * D + sum(a.size for a in block.arrays().values())
    onnx.checker.check_model(converted, full_check=True)
    y = make_session(converted, kernel=False).run(
        None, {"x": np.zeros((1, 2, D), np.float32)})[0]
    assert y.shape == (1, 2, D)
    # the output exists now: a second run refuses without --force (exit 2) and keeps it
    again = _digest(tmp_path / "m.quweit.onnx")
    assert main([str(model), "--quiet"]) == 2
    assert _digest(tmp_path / "m.quweit.onnx") == again
    assert main([str(model), "--quiet", "--force", "--no-sensitivity", "--calib", str(tmp_path / "c.npz")]) == 0


def test_external_data_in_and_out(tmp_path):
    model = _mlp_model(tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").exists()
    out = tmp_path / "out.onnx"
    assert main([str(model), "-o", str(out), "--quiet", "--no-sensitivity", "--calib", str(_calib(tmp_path / "c.npz"))]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    assert sum(1 for n in load_model(out).graph.node if n.domain == "quweit") == 1


def test_old_opset_is_upgraded(tmp_path):
    model = _mlp_model(tmp_path / "old.onnx", opset=13)
    assert main([str(model), "--quiet", "--no-sensitivity", "--calib", str(_calib(tmp_path / "c.npz"))]) == 0
    converted = load_model(tmp_path / "old.quweit.onnx")
    assert {o.domain: o.version for o in converted.opset_import}[""] == 18
    onnx.checker.check_model(converted, full_check=True)


def test_synthetic_calibration_warns_loudly(tmp_path):
    model = _mlp_model(tmp_path / "m.onnx")
    with pytest.warns(UserWarning, match="RANDOM inputs"):
        assert main([str(model), "--quiet", "--no-sensitivity"]) == 0


def test_layers_auto_and_explicit(tmp_path, capsys):
    model = _mlp_model(tmp_path / "m.onnx")
    calib = str(_calib(tmp_path / "c.npz"))
    assert main([str(model), "--calib", calib, "--layers", "none", "-o", str(tmp_path / "none.onnx"), "--quiet"]) == 0
    assert "replaced 0/1 MLPs" in capsys.readouterr().out
    assert main([str(model), "--calib", calib, "--layers", "auto", "--fidelity-floor", "1.01",
                 "-o", str(tmp_path / "a.onnx"), "--quiet", "--report", str(tmp_path / "a.json")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["mlps_replaced"] == 0 and report["mlps"][0]["reason"] == "below the fidelity floor"
    assert main([str(model), "--calib", calib, "--layers", "auto", "--fidelity-floor", "-1",
                 "-o", str(tmp_path / "b.onnx"), "--quiet", "--report", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["mlps_replaced"] == 1


def _bad_inputs(tmp_path):
    good = _mlp_model(tmp_path / "good.onnx")
    data = good.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    (tmp_path / "dir.onnx").mkdir()
    invalid = load_model(good)
    invalid.graph.node[1].input[0] = "nowhere"
    save_model(invalid, tmp_path / "invalid.onnx")
    future = load_model(good)
    future.opset_import[0].version = 999
    save_model(future, tmp_path / "future.onnx")
    (tmp_path / "exists.quweit.onnx").write_bytes(b"keep me")
    _mlp_model(tmp_path / "exists.onnx")
    write_npz(tmp_path / "wrong.npz", {"not_an_input": np.zeros((2, 3, D), np.float32)})
    return {
        "missing file": [str(tmp_path / "missing.onnx")],
        "a directory": [str(tmp_path / "dir.onnx")],
        "truncated protobuf": [str(tmp_path / "trunc.onnx")],
        "not onnx": [str(tmp_path / "text.onnx")],
        "invalid graph": [str(tmp_path / "invalid.onnx")],
        "unsupported opset": [str(tmp_path / "future.onnx")],
        "output exists": [str(tmp_path / "exists.onnx")],
        "calib names wrong": [str(good), "--calib", str(tmp_path / "wrong.npz"), "-o", str(tmp_path / "w.onnx")],
        "calib not npz": [str(good), "--calib", str(tmp_path / "text.onnx"), "-o", str(tmp_path / "w2.onnx")],
        "bad layers": [str(good), "--layers", "7", "-o", str(tmp_path / "w3.onnx")],
    }


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    for label, argv in _bad_inputs(tmp_path).items():
        listing = sorted(p.name for p in tmp_path.iterdir())
        assert main([*argv, "--quiet"]) == 2, label
        err = capsys.readouterr().err
        assert "quweit-convert: error:" in err, label
        assert sorted(p.name for p in tmp_path.iterdir()) == listing, label  # no output, no temp file
    assert (tmp_path / "exists.quweit.onnx").read_bytes() == b"keep me"


def test_no_mlp_exits_3_and_writes_nothing(tmp_path, capsys):
    model = _mlp_model(tmp_path / "plain.onnx", with_mlp=False)
    assert main([str(model), "--quiet", "--explain"]) == 3
    captured = capsys.readouterr()
    assert "no MLP found" in captured.err
    assert "proj: Linear [8, 8] is not part of Linear -> activation -> Linear (its output goes to Relu 'act')" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]


def test_bad_usage_exits_2():
    result = subprocess.run([sys.executable, "-m", "quweit.converter.cli", "--layers"], capture_output=True, check=False)
    assert result.returncode == 2


def test_block_structure_options(tmp_path):
    model = _mlp_model(tmp_path / "m.onnx")
    argv = [str(model), "--quiet", "--no-sensitivity", "--calib", str(_calib(tmp_path / "c.npz")),
            "--lut-inputs", "4", "--thresholds", "3", "--luts-per-output", "2", "--hidden-layers", "32"]
    assert main(argv) == 0
    (block,) = read_blocks(load_model(tmp_path / "m.quweit.onnx"))
    assert (block.lut_inputs, block.thresholds_per_feature, block.layer_sizes) == (4, 3, (32, 2 * D))
    assert main([*argv[:-2], "--hidden-layers", "x", "-o", str(tmp_path / "z.onnx")]) == 2


def _interrupt_after(target, attribute: str, calls: int = 1, signal_number: int | None = None):
    """Wrap `target.attribute`: from its `calls`-th call on, run it and then interrupt (Ctrl-C, or a real
    signal sent to this process)."""
    import os

    real = getattr(target, attribute)
    seen = []

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(1)
        if len(seen) >= calls:
            if signal_number is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal_number)
        return result

    return wrapped


def _interrupt_points():
    from quweit.converter import cli, convert, detect, stages
    from quweit.onnxio import save

    return {
        "detecting": (convert, "detect", 1),
        "first fit": (convert, "_Fitter.__call__", 1),
        "sensitivity": (stages, "Stream.fork", 1),
        "streaming": (stages, "Stream._run", 3),
        "rewriting": (convert, "replace_with_block", 1),
        "finishing": (convert, "finish", 1),
        "model written, not moved": (save.ir, "save", 1),
        "report written, not moved": (cli, "json_text", 1),
        "inlining": (detect, "inline_fusions", 1),
    }


@pytest.mark.parametrize("point", list(_interrupt_points()))
def test_interrupt_at_any_step_leaves_nothing(tmp_path, monkeypatch, point):
    model = _mlp_model(tmp_path / "m.onnx", external=True)
    calib = str(_calib(tmp_path / "c.npz"))
    module, attribute, calls = _interrupt_points()[point]
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    monkeypatch.setattr(owner, name, _interrupt_after(owner, name, calls))
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(model), "--quiet", "--calib", calib, "--report", str(tmp_path / "r.json")]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no output, no temporary file


SIGTERM_CONVERT = """
import os, signal, sys
from quweit.converter import convert
from quweit.converter.cli import main

real = convert._Fitter.__call__
def fit_then_terminate(self, *args, **kwargs):
    result = real(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return result
convert._Fitter.__call__ = fit_then_terminate
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_conversion_leaves_nothing(tmp_path):
    model = _mlp_model(tmp_path / "m.onnx", external=True)
    calib = str(_calib(tmp_path / "c.npz"))
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run([sys.executable, "-c", SIGTERM_CONVERT, str(model), "--quiet", "--calib", calib],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 143, result.stderr
    assert "no partial output" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def _with_weight(path, name, value):
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(np.full(tuple(tensor.dims), value, np.float32), name))
    onnx.save(model, str(path))
    return path


def test_model_computing_nan_exits_2_naming_file_and_mlp(tmp_path, capsys):
    """Found by bench/fuzz.py (spliced weights): an MLP whose outputs are NaN on the calibration data was
    an internal error (fit_block's ValueError); it is the model's fault, named in one line."""
    model = _with_weight(_mlp_model(tmp_path / "m.onnx"), "w2", np.nan)
    code = main([str(model), "--calib", str(_calib(tmp_path / "c.npz")), "--quiet", "--no-sensitivity"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{model}: MLP 0 (" in err and "output is NaN or infinite on the calibration data" in err
    assert not (tmp_path / "m.quweit.onnx").exists()


@pytest.mark.parametrize("to", [0, (1 << 62) + 1])
def test_model_with_an_impossible_cast_exits_2_with_the_reason(to, tmp_path, capsys):
    """Found by bench/fuzz.py: a Cast to a data type that does not exist passes the loader's check but
    made the onnxscript optimizer (huge `to`) or onnxruntime (`to=0`) fail, which was an internal error
    (exit 1); onnx's full check, or onnxruntime refusing the user's own model, names the problem."""
    model = onnx.load(str(_mlp_model(tmp_path / "m.onnx")))
    model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x_cast"], to=to, name="bad_cast"))
    model.graph.node[1].input[0] = "x_cast"
    onnx.save(model, str(tmp_path / "cast.onnx"))
    code = main([str(tmp_path / "cast.onnx"), "--quiet", "--no-sensitivity"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cast.onnx: " in err and ("data type" in err or "DataType" in err), err


def test_hardware_block_options(tmp_path, capsys):
    """--popcount --value-bits --input-bits: plain v1 blocks with one power-of-two value per group, narrow
    biases and 5-bit inputs; out-of-range option values exit 2."""
    model = _mlp_model(tmp_path / "m.onnx")
    argv = [str(model), "--quiet", "--no-sensitivity", "--calib", str(_calib(tmp_path / "c.npz")),
            "--luts-per-output", "4", "--popcount", "--value-bits", "6", "--input-bits", "5"]
    assert main(argv) == 0
    (block,) = read_blocks(load_model(tmp_path / "m.quweit.onnx"))
    values = block.encoded_values.reshape(-1, 4)
    assert block.input_bits == 5 and (values == values[:, :1]).all()
    assert all(v & (v - 1) == 0 for v in values[:, 0].tolist()) and np.abs(block.bias).max() <= 31
    assert main([*argv, "--value-bits", "1", "-o", str(tmp_path / "z.onnx")]) == 2
    assert "--value-bits 1" in capsys.readouterr().err

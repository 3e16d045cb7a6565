"""The one ONNX I/O layer: safe loading (external data only inside the model's folder, sizes checked
against bytes before anything is read), the atomic writer (nothing left behind on failure, Ctrl-C or
SIGTERM; no clobbering), the session factory for in-memory models, runs for static shapes, the
synthetic-input policy and the capture."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from quweit import onnxio
from quweit.onnxio import BadInputError

D = 4


def _matmul_model(weight: np.ndarray | None = None) -> onnx.ModelProto:
    weight = np.arange(D * D, dtype=np.float32).reshape(D, D) / 7 if weight is None else weight
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _external(folder, location: str = "m.onnx.data", *, offset: int | None = None, length: int | None = None):
    """m.onnx whose weight `w` lives in `location` (written at offset 0 unless the location escapes)."""
    model = _matmul_model()
    tensor = model.graph.initializer[0]
    data = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    if not os.path.isabs(location) and ".." not in location:
        (folder / location).write_bytes(data)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path, data


def test_external_data_inside_the_folder_loads_as_proto_and_ir(tmp_path):
    path, data = _external(tmp_path)
    proto = onnxio.load_model(path)
    assert proto.graph.initializer[0].raw_data == data
    model = onnxio.load_ir(path)
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), np.frombuffer(data, np.float32)
                                  .reshape(D, D))
    assert onnxio.has_external_data(path)


@pytest.mark.parametrize("case,needle", [
    ("absolute", "is absolute"),
    ("dotdot", "leaves the model's folder"),
    ("symlink", "outside the model's folder"),
    ("missing", "does not exist"),
    ("short", "has 32 bytes, the tensor needs 64 at offset 0"),
    ("offset", "the tensor needs 64 at offset 16"),
    ("length", "external data length 32 != 64"),
    ("bad_offset", "offset 'x' is not an integer"),
])
def test_hostile_external_data_is_refused_in_one_line(tmp_path, case, needle):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.data").write_bytes(np.ones(D * D, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    if case == "absolute":
        path, _ = _external(folder, str(outside / "secret.data"))
    elif case == "dotdot":
        path, _ = _external(folder, "../outside/secret.data")
    elif case == "symlink":
        path, _ = _external(folder, "link.data")
        (folder / "link.data").unlink()
        (folder / "link.data").symlink_to(outside / "secret.data")
    elif case == "missing":
        path, _ = _external(folder)
        (folder / "m.onnx.data").unlink()
    elif case == "short":
        path, data = _external(folder)
        (folder / "m.onnx.data").write_bytes(data[:32])
    elif case == "offset":
        path, _ = _external(folder, offset=16)
    elif case == "length":
        path, _ = _external(folder, length=32)
    else:
        path, _ = _external(folder)
        model = onnx.load(str(path), load_external_data=False)
        offset = model.graph.initializer[0].external_data.add()
        offset.key, offset.value = "offset", "x"
        path.write_bytes(model.SerializeToString())
    for loader in (onnxio.load_model, onnxio.load_ir):
        with pytest.raises(BadInputError) as caught:
            loader(path)
        message = str(caught.value)
        assert needle in message and "'w'" in message and str(path) in message and "\n" not in message


def test_convert_cli_exits_2_on_escaping_external_data(tmp_path, capsys):
    from quweit.converter.cli import main

    (tmp_path / "secret.data").write_bytes(np.ones(D * D, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = _external(folder, "../secret.data")
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quweit-convert: error:") and "leaves the model's folder" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("case,needle", [
    ("raw_short", "raw_data holds 60 bytes, dims [4, 4] of FLOAT need 64"),
    ("huge_dims", "raw_data holds 64 bytes, dims [1099511627776, 4] of FLOAT need 17592186044416"),
    ("negative", "negative dimension in dims [-1, 4]"),
    ("typed_count", "float_data holds 3 values, dims [4, 4] of FLOAT need 16"),
])
def test_sizes_are_checked_against_the_bytes(tmp_path, case, needle):
    model = _matmul_model()
    tensor = model.graph.initializer[0]
    if case == "raw_short":
        tensor.raw_data = tensor.raw_data[:60]
    elif case == "huge_dims":
        tensor.dims[0] = 1 << 40
    elif case == "negative":
        tensor.dims[0] = -1
    else:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0, 2.0, 3.0])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BadInputError, match="initializer 'w'") as caught:
        onnxio.load_model(path)
    assert needle in str(caught.value)


def test_unreadable_files_are_bad_input(tmp_path):
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "dir.onnx").mkdir()
    for name, needle in (("text.onnx", "not"), ("dir.onnx", "not a file"), ("absent.onnx", "no such file")):
        with pytest.raises(BadInputError, match=needle):
            onnxio.load_model(tmp_path / name)


def test_old_opset_upgraded_only_when_asked(tmp_path):
    model = _matmul_model()
    model.opset_import[0].version = 13
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert onnxio.default_opset(onnxio.load_model(tmp_path / "old.onnx")) == 13
    assert onnxio.default_opset(onnxio.load_model(tmp_path / "old.onnx", upgrade=True)) == 18
    assert onnxio.load_ir(tmp_path / "old.onnx", upgrade=True).opset_imports[""] == 18


# --- the atomic writer -------------------------------------------------------------------------------


def test_writer_leaves_nothing_on_interrupt_and_refuses_to_clobber(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt), onnxio.atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    onnxio.write_json(target, {"a": np.float32(1.5), "b": np.arange(2)})
    assert target.read_text() == '{\n  "a": 1.5,\n  "b": [\n    0,\n    1\n  ]\n}\n'
    with pytest.raises(BadInputError, match="exists; pass --force"):
        onnxio.write_json(target, {})
    onnxio.write_json(target, {}, force=True)
    assert target.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_model_with_external_data_is_all_or_nothing(tmp_path, monkeypatch):
    model = _matmul_model(np.random.default_rng(0).standard_normal((D, 64)).astype(np.float32))  # 1 KiB
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 64
    real_replace = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(BadInputError, match="No space left on device"):
        onnxio.save_model(model, tmp_path / "m.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []  # the .onnx that was already moved went again
    monkeypatch.setattr(os, "replace", real_replace)
    onnxio.save_model(model, tmp_path / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert onnxio.load_model(tmp_path / "m.onnx").graph.initializer[0].raw_data == model.graph.initializer[0].raw_data
    ir_model = onnxio.load_ir(tmp_path / "m.onnx")
    onnxio.save_model(ir_model, tmp_path / "copy.onnx")  # still mapped from m.onnx.data: written with its own
    assert (tmp_path / "copy.onnx.data").is_file()
    x = np.ones((2, D), np.float32)
    np.testing.assert_allclose(onnxio.make_session(tmp_path / "copy.onnx").run(None, {"x": x})[0],
                               x @ numpy_helper.to_array(model.graph.initializer[0]), rtol=1e-6)


SIGTERM_CHILD = """
import os, signal, sys, time
from quweit.onnxio import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_text("partial")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""


def test_sigterm_while_writing_leaves_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "out.txt")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "Terminated" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_npz_reader_checks_sizes_and_never_unpickles(tmp_path):
    good = tmp_path / "good.npz"
    onnxio.write_npz(good, {"x": np.ones((3, D), np.float32)})
    assert onnxio.load_arrays(good)["x"].shape == (3, D)
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as archive:  # a header claiming 2**40 floats, 16 bytes of data
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 16)
    with pytest.raises(BadInputError, match=r"array 'x' claims shape \[1099511627776\] of float32"):
        onnxio.load_arrays(huge)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInputError, match="Python objects"):
        onnxio.load_arrays(objects)


# --- sessions, runs, synthetic inputs, capture ---------------------------------------------------------


def test_session_of_an_ir_model_shares_the_mapped_weights_and_hands_over_large_ones(tmp_path, monkeypatch):
    from quweit.onnxio import session

    path, _ = _external(tmp_path)
    model = onnxio.load_ir(path)
    x = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)
    want = onnxio.make_session(path).run(None, {"x": x})[0]
    np.testing.assert_array_equal(onnxio.make_session(model).run(None, {"x": x})[0], want)
    in_memory = onnxio.load_ir(path)  # weights in memory, handed over as OrtValues instead of the proto
    import onnx_ir as ir

    in_memory.graph.initializers["w"].const_value = ir.tensor(in_memory.graph.initializers["w"].const_value.numpy())
    monkeypatch.setattr(session, "HANDOVER_MIN_BYTES", 16)
    np.testing.assert_array_equal(onnxio.make_session(in_memory).run(None, {"x": x})[0], want)
    assert isinstance(in_memory.graph.initializers["w"].const_value, ir.Tensor)  # put back after serializing


def _static_model(batch: int = 1, length: int = 3) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["h"], name="embed"),
         helper.make_node("Mul", ["h", "m"], ["y"], name="mask")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, length]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, length, D])],
        [numpy_helper.from_array(np.arange(7 * D, dtype=np.float32).reshape(7, D), "emb")],
    )
    graph.node.insert(0, helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT))
    graph.node.insert(1, helper.make_node("Unsqueeze", ["mf", "axis"], ["m"]))
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "axis"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_runs_follow_a_static_batch_and_capture_keeps_only_real_rows():
    model = _static_model(batch=2)
    arrays = {"ids": np.arange(15).reshape(5, 3) % 7, "attention_mask": np.ones((5, 3), np.int64)}
    arrays["attention_mask"][4, 2] = 0
    assert onnxio.check_inputs(model, arrays) == 5
    runs = onnxio.runs(model, arrays, 16)
    assert [r.rows for r in runs] == [2, 2, 1] and all(len(r.feeds["ids"]) == 2 for r in runs)
    got = onnxio.capture(model, runs, ["h"], kernel=False)["h"]
    emb = np.arange(7 * D, dtype=np.float32).reshape(7, D)
    assert np.array_equal(got, emb[arrays["ids"][arrays["attention_mask"].astype(bool)]])  # 14 real tokens
    free = _static_model(batch="batch")
    assert [r.rows for r in onnxio.runs(free, arrays, 4)] == [4, 1]


def test_a_sample_that_cannot_fit_names_the_input_and_both_shapes():
    model = _static_model(batch=1, length=3)
    arrays = {"ids": np.zeros((4, 5), np.int64), "attention_mask": np.ones((4, 5), np.int64)}
    with pytest.raises(BadInputError) as caught:
        onnxio.check_inputs(model, arrays, "--calib c.npz")
    assert str(caught.value).startswith("--calib c.npz: input 'ids' is declared [1, 3], the given samples have shape "
                                        "[4, 5]: axis 1 must be 3, got 5")


def test_synthetic_policy_follows_the_declared_inputs():
    model = _static_model(batch=1, length=3)
    arrays = onnxio.synthetic_inputs(model, samples=5, length=9, seed=1)
    assert arrays["ids"].shape == (5, 3) and arrays["ids"].max() < 7 and arrays["ids"].min() >= 0  # 7 embedding rows
    assert np.array_equal(arrays["attention_mask"], np.ones((5, 3), np.int64))
    assert onnxio.check_inputs(model, arrays) == 5
    free = onnxio.synthetic_inputs(_matmul_model(), samples=2, length=9)
    assert free["x"].shape == (2, D) and free["x"].dtype == np.float32


def test_text_that_is_not_utf8_is_refused(tmp_path):
    """Found by bench/fuzz.py: a bit flip inside a node's metadata made a proto2 string invalid UTF-8;
    protobuf hands it over as bytes and the converter's IR failed deep inside (exit 1)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.graph.node[0].metadata_props.add(key="note", value="A\u0394B")
    data = model.SerializeToString()
    assert data.count("\u0394".encode()) == 1
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace("\u0394".encode(), b"\xf4y"))
    with pytest.raises(BadInputError, match=r"node\[relu\]\.metadata_props\[0\]\.value is not valid UTF-8"):
        onnxio.load_model(path)


def test_an_absurd_fixed_batch_is_refused_before_padding():
    """Found by bench/fuzz.py: a model declaring a batch of 2^40 made `runs` repeat the samples up to it
    (a 2^40-row allocation: out of memory, or an abort under AddressSanitizer)."""
    from quweit.onnxio import runs

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 40, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 40, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(BadInputError, match="fix a batch of 1099511627776 rows"):
        runs(model, {"x": np.zeros((4, 3), np.float32)}, 2)
    small = helper.make_model(helper.make_graph(graph.node, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])]),
                              opset_imports=[helper.make_opsetid("", 18)])
    (run,) = runs(small, {"x": np.zeros((4, 3), np.float32)}, 2)
    assert run.rows == 4 and run.feeds["x"].shape == (8, 3)  # an ordinary fixed batch is still filled up


def test_synthetic_inputs_refuse_an_absurd_declared_axis():
    from quweit.onnxio import synthetic_inputs

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1 << 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1 << 40])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(BadInputError, match="model input 'x' is declared .* pass real inputs"):
        synthetic_inputs(model)

"""Hostile and broken model files, shared by the command error-path tests and the fault tests.

Each maker writes one file (and any side file) into a folder and returns the path to give a command;
every one must be refused by every command with exit 2 and one line naming what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, H = 8, 16


def mlp_model(opset: int = 18) -> onnx.ModelProto:
    """x -> x + down(relu(up(x))): the smallest model with one MLP (symbolic batch and sequence)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((D, H)).astype(np.float32), rng.standard_normal((H, D)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["m"], name="down"), helper.make_node("Add", ["x", "m"], ["y"], name="res")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", D])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _external(model: onnx.ModelProto, name: str, location: str, offset: int = 0, length: int | None = None):
    """Point initializer `name` at external data `location` (its bytes are not written)."""
    tensor = next(t for t in model.graph.initializer if t.name == name)
    size = len(tensor.raw_data) or numpy_helper.to_array(tensor).nbytes
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": str(offset), "length": str(size if length is None else length)}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return size


def missing(folder: Path) -> Path:
    return folder / "absent.onnx"


def directory(folder: Path) -> Path:
    (folder / "dir.onnx").mkdir()
    return folder / "dir.onnx"


def garbage(folder: Path) -> Path:
    path = folder / "garbage.onnx"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def truncated(folder: Path) -> Path:
    data = mlp_model().SerializeToString()
    path = folder / "truncated.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def external_escapes(folder: Path) -> Path:
    """Weights 'outside the folder' (../secret.bin, which exists): must never be read."""
    inner = folder / "inner"
    inner.mkdir()
    model = mlp_model()
    size = _external(model, "w1", "../secret.bin")
    (folder / "secret.bin").write_bytes(b"\x00" * size)
    return _save(model, inner / "escape.onnx")


def external_absolute(folder: Path) -> Path:
    model = mlp_model()
    size = _external(model, "w1", str((folder / "abs.bin").resolve()))
    (folder / "abs.bin").write_bytes(b"\x00" * size)
    return _save(model, folder / "absolute.onnx")


def external_truncated(folder: Path) -> Path:
    """The side file is shorter than the tensor needs."""
    model = mlp_model()
    size = _external(model, "w1", "short.bin")
    (folder / "short.bin").write_bytes(b"\x00" * (size // 2))
    return _save(model, folder / "short.onnx")


def external_missing(folder: Path) -> Path:
    model = mlp_model()
    _external(model, "w1", "nowhere.bin")
    return _save(model, folder / "nowhere.onnx")


def huge_dims(folder: Path) -> Path:
    """An initializer claiming 2^40 floats with 512 bytes of data (must be refused before allocating)."""
    model = mlp_model()
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    del tensor.dims[:]
    tensor.dims.extend([1 << 20, 1 << 20])
    return _save(model, folder / "huge.onnx")


def negative_dims(folder: Path) -> Path:
    model = mlp_model()
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    tensor.dims[0] = -D
    return _save(model, folder / "negative.onnx")


def future_opset(folder: Path) -> Path:
    model = mlp_model()
    model.opset_import[0].version = 99
    return _save(model, folder / "future.onnx")


def cycle(folder: Path) -> Path:
    """Two nodes feeding each other."""
    model = mlp_model()
    model.graph.node[0].input[0] = "y"
    return _save(model, folder / "cycle.onnx")


MAKERS = {f.__name__: f for f in (missing, directory, garbage, truncated, external_escapes, external_absolute,
                                  external_truncated, external_missing, huge_dims, negative_dims, future_opset,
                                  cycle)}

"""Reading models defensively and writing them atomically (external data in and out).

Reading never modifies the input; writing goes to a temporary folder beside the target and is moved
into place with `os.replace` only when complete, so a failure or Ctrl-C leaves no partial output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import BadInputError

#: Serialized size above which weights go to a side file `<name>.data` (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
MIN_OPSET = 18


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and fully check an ONNX model (external data included), or raise `BadInputError`."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if not path.is_file():
        raise BadInputError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not a readable ONNX model (truncated or invalid protobuf): {err}") from err
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{path}: not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{path}: invalid ONNX model: {first}") from err
    return upgrade_opset(model, str(path))


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise BadInputError("model imports no default ONNX domain")


def upgrade_opset(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """Models below opset 18 are upgraded (the block's decomposition needs 18); newer than onnx knows: refused."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise BadInputError(f"{where}: unsupported opset {opset} (this onnx {onnx.__version__} knows up to {newest})")
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as err:  # the converter raises bare RuntimeErrors for unsupported ops
        raise BadInputError(f"{where}: unsupported opset {opset}: upgrading to {MIN_OPSET} failed: {err}") from err
    return upgraded


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically; weights go to `<path>.data` when large or when asked."""
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"
    if external_data:  # onnx moves tensors out in place: work on a copy, never on the caller's model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=external_data,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        if external_data:
            os.replace(tmp / data_name, path.parent / data_name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def has_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at `path` keeps tensors in side files."""
    model = onnx.load(str(path), load_external_data=False)
    return any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)

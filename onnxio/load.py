"""The one model loader: read an ONNX file defensively, check every tensor's size against the bytes
that back it and every external-data reference against the model's folder, run onnx's checker, and
return either a `ModelProto` (data loaded) or an onnx-ir `Model` (external data memory-mapped lazily).

Why not `onnx.load(..., load_external_data=True)`: it follows a location before checking it (onnx
raises its checker's error from inside the load, which surfaced as a traceback), trusts the sizes
written in the file, and loads every weight into memory even when the caller only streams them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import BadInputError

MIN_OPSET = 18
#: Bits per element of the packed sub-byte types (two or four values per byte).
_SUB_BYTE_BITS = {getattr(TensorProto, n): b for n, b in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4),
                                                          ("INT2", 2), ("UINT2", 2)) if hasattr(TensorProto, n)}
_COMPLEX = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}


def load_model(path: str | os.PathLike, *, upgrade: bool = False, check: bool = True) -> onnx.ModelProto:
    """The checked model with its external data read in (only from inside the model's folder).

    `upgrade`: models below opset 18 are converted to 18 (the converter needs it); without it the model
    is returned at its own opset. Raises `BadInputError` with one line naming the file and the problem.
    """
    path = Path(path)
    proto = _read_checked(path, check=check)
    folder = path.parent
    for where, tensor in _tensors(proto):
        if tensor.data_location == TensorProto.EXTERNAL:
            info = _external_info(tensor)
            with open(folder / info["location"], "rb") as handle:
                handle.seek(info["offset"])
                tensor.raw_data = handle.read(_data_bytes(tensor))
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
    return upgrade_opset(proto, str(path)) if upgrade else proto


def load_ir(path: str | os.PathLike, *, upgrade: bool = False, check: bool = True) -> ir.Model:
    """The checked model as onnx-ir, its external tensors memory-mapped on first use (checked first)."""
    path = Path(path)
    proto = _read_checked(path, check=check)
    if upgrade and default_opset(proto) < MIN_OPSET:  # rare (old exports): the upgrade needs the data in memory
        return ir.serde.deserialize_model(load_model(path, upgrade=True, check=False))
    if upgrade:
        upgrade_opset(proto, str(path))  # refuses opsets newer than onnx knows
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    return model


def has_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at `path` keeps tensors in side files (checked like a load)."""
    proto = _read_checked(Path(path), check=False)
    return any(t.data_location == TensorProto.EXTERNAL for _, t in _tensors(proto))


def _read_checked(path: Path, *, check: bool) -> onnx.ModelProto:
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if not path.is_file():
        raise BadInputError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not a readable ONNX model (truncated or invalid protobuf): "
                            f"{_first_line(err)}") from err
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise BadInputError(f"{path}: not an ONNX model (no graph)")
    check_strings(proto, str(path))
    external = check_tensors(proto, path)
    check_opsets(proto, str(path))
    if check:
        try:  # onnx resolves external data against the model's folder only when given the path
            onnx.checker.check_model(str(path) if external else proto, full_check=False)
        except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:
            raise BadInputError(f"{path}: invalid ONNX model: {_first_line(err)}") from err
    return proto


def check_tensors(proto: onnx.ModelProto, path: Path) -> bool:
    """Every tensor's data matches its dims and dtype; external data lies inside `path`'s folder and
    holds the bytes it claims. Sizes are compared before anything is read or allocated. Returns whether
    any tensor keeps its data in a side file."""
    folder = path.parent.resolve()
    external = False
    for where, tensor in _tensors(proto):
        label = f"{path}: {where} '{tensor.name}'"
        bad = [d for d in tensor.dims if d < 0]
        if bad:
            raise BadInputError(f"{label}: negative dimension in dims {list(tensor.dims)}")
        if tensor.data_type == TensorProto.UNDEFINED or tensor.data_type not in TensorProto.DataType.values():
            raise BadInputError(f"{label}: unknown data type {tensor.data_type}")
        count = math.prod(tensor.dims)
        if tensor.data_location == TensorProto.EXTERNAL:
            _check_external(tensor, folder, label)
            external = True
        elif tensor.HasField("raw_data"):
            want = _data_bytes(tensor)
            if want is not None and len(tensor.raw_data) != want:
                raise BadInputError(f"{label}: raw_data holds {len(tensor.raw_data)} bytes, dims "
                                    f"{list(tensor.dims)} of {_type_name(tensor)} need {want}")
        else:
            field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
            have = len(getattr(tensor, field))
            want = _field_count(tensor.data_type, count)
            if have != want:
                raise BadInputError(f"{label}: {field} holds {have} values, dims {list(tensor.dims)} of "
                                    f"{_type_name(tensor)} need {want}")
    return external


def _check_external(tensor: TensorProto, folder: Path, label: str) -> None:
    info = _external_info(tensor, label)
    location = info["location"]
    parts = Path(location).parts
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        raise BadInputError(f"{label}: external data location '{location}' is absolute; it must lie in the "
                            "model's folder")
    if ".." in parts or any(".." in p.split("\\") for p in parts):
        raise BadInputError(f"{label}: external data location '{location}' leaves the model's folder ('..')")
    target = folder / location
    resolved = Path(os.path.realpath(target))
    if resolved != folder and folder not in resolved.parents:
        raise BadInputError(f"{label}: external data location '{location}' resolves to {resolved}, outside "
                            f"the model's folder {folder} (a symlink)")
    if not resolved.is_file():
        raise BadInputError(f"{label}: external data file '{location}' does not exist in {folder}")
    want = _data_bytes(tensor)
    if want is None:
        raise BadInputError(f"{label}: {_type_name(tensor)} tensors cannot be stored as external data")
    size = resolved.stat().st_size
    if info["length"] is not None and info["length"] != want:
        raise BadInputError(f"{label}: external data length {info['length']} != {want} bytes that dims "
                            f"{list(tensor.dims)} of {_type_name(tensor)} need")
    if info["offset"] + want > size:
        raise BadInputError(f"{label}: external data '{location}' has {size} bytes, the tensor needs "
                            f"{want} at offset {info['offset']}")


def _external_info(tensor: TensorProto, label: str = "") -> dict:
    entries = {e.key: e.value for e in tensor.external_data}
    if not entries.get("location"):
        raise BadInputError(f"{label}: external data without a location")
    values = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        try:
            values[key] = None if text in (None, "") else int(text)
        except ValueError:
            raise BadInputError(f"{label}: external data {key} '{text}' is not an integer") from None
        if values[key] is not None and values[key] < 0:
            raise BadInputError(f"{label}: external data {key} {values[key]} is negative")
    return {"location": entries["location"], "offset": values["offset"] or 0, "length": values["length"]}


def _data_bytes(tensor: TensorProto) -> int | None:
    """Bytes of the raw data that dims and dtype call for (None for strings)."""
    if tensor.data_type == TensorProto.STRING:
        return None
    count = math.prod(tensor.dims)
    bits = _SUB_BYTE_BITS.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _field_count(data_type: int, count: int) -> int:
    """Entries of the typed field (float_data, int32_data, ...) that `count` elements take."""
    if data_type in _COMPLEX:
        return 2 * count
    bits = _SUB_BYTE_BITS.get(data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count


def _type_name(tensor: TensorProto) -> str:
    return TensorProto.DataType.Name(tensor.data_type)


def _tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every tensor stored in the model: initializers, sparse values/indices and tensor attributes, in the
    main graph, its subgraphs and the model's functions."""
    stack: list[onnx.GraphProto] = [proto.graph]
    nodes: list[onnx.NodeProto] = [n for f in proto.functions for n in f.node]
    while stack:
        graph = stack.pop()
        for tensor in graph.initializer:
            yield "initializer", tensor
        for sparse in graph.sparse_initializer:
            yield "sparse initializer values", sparse.values
            yield "sparse initializer indices", sparse.indices
        nodes.extend(graph.node)
        while nodes:
            node = nodes.pop()
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield f"attribute {attr.name} of node '{node.name}'", attr.t
                for tensor in attr.tensors:
                    yield f"attribute {attr.name} of node '{node.name}'", tensor
                if attr.HasField("sparse_tensor"):
                    yield f"attribute {attr.name} of node '{node.name}'", attr.sparse_tensor.values
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_strings(message, where: str = "model", field_path: str = "model") -> None:
    """Every string field is valid UTF-8, as protobuf requires. ONNX's messages are proto2, whose parser
    lets invalid text through (Python's protobuf then hands it over as bytes, which onnx-ir and others
    fail on deep inside); tensor data are `bytes` fields and are not read."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            for text in (value if field.is_repeated else [value]):
                if not isinstance(text, str):
                    raise BadInputError(f"{where}: {field_path}.{field.name} is not valid UTF-8 text: {bytes(text)[:40]!r}")
        elif field.type == field.TYPE_MESSAGE:
            for index, child in enumerate(value if field.is_repeated else [value]):
                label = getattr(child, "name", "")
                check_strings(child, where, f"{field_path}.{field.name}[{label if isinstance(label, str) and label else index}]")


def check_opsets(model: onnx.ModelProto, where: str = "model") -> None:
    """A default-domain opset newer than this onnx knows is refused (its ops may mean something else);
    so is one below 1. Other domains are checked by their readers (the block's: `read_blocks`)."""
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= newest:
            raise BadInputError(f"{where}: unsupported opset {entry.version} of the default domain (this onnx "
                                f"{onnx.__version__} knows 1 to {newest})")


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
        raise BadInputError(f"{where}: unsupported opset {opset}: upgrading to {MIN_OPSET} failed: "
                            f"{_first_line(err)}") from err
    return upgraded

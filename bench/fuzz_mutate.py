"""The fuzzer's mutations of a seed model, deterministic for a given random generator.

Three families, as the trusted parsers' fuzzers have them, plus valid variations:
- `structure`: a well-formed protobuf with a wrong model inside (dtypes, dims, missing/duplicate
  initializers, dangling inputs, cycles, huge attributes, unknown and future opsets, external data that
  escapes the folder or is truncated, a broken decomposition function);
- `block`: a `quweit::WeightlessBlock` invalid in one field of spec section 5 (attributes, dtypes, shapes,
  scales, thresholds, mapping, tables, accumulator bound, constness, input count, X's width);
- `bytes`: the serialized file truncated, bit-flipped, spliced with another seed, zeroed, extended;
- `valid`: changes that keep the model valid (perturbed weights, another valid block, parameters at the
  edges of their ranges), so accepted models are compared with the reference.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DOMAIN, OP_TYPE = "quweit", "WeightlessBlock"
PARAMS = ("input_scale", "thresholds", "mapping", "tables", "encoded_values", "bias", "output_scale")
ATTRIBUTES = ("in_features", "out_features", "thresholds_per_feature", "lut_inputs", "layer_sizes", "input_bits")
HUGE = (1 << 31, 1 << 40, (1 << 62) + 1, -(1 << 62))
FAMILY_WEIGHTS = {"structure": 0.3, "block": 0.3, "bytes": 0.3, "valid": 0.1}


@dataclasses.dataclass
class Case:
    index: int
    seed: str
    family: str
    mutation: str
    model: Path  # the file to give the commands
    calib: Path  # model inputs (npz), for --calib and the runtime targets
    width: int | None = None  # a wrong last-axis width to feed a block model's X, when the mutation says so


class Skip(Exception):
    """This mutation does not apply to this seed (the next one is drawn)."""


def make_case(index: int, seeds, corpus: Path, folder: Path, rng: np.random.Generator) -> Case:
    """Draw a seed and a mutation, write the case's files into `folder` (empty) and describe them."""
    weights = np.array([s.weight for s in seeds], dtype=float)
    seed = seeds[int(rng.choice(len(seeds), p=weights / weights.sum()))]
    for side in seed.side_files:  # copies: onnx refuses hard-linked external data (a "hardlink attack")
        shutil.copyfile(corpus / side, folder / side)
    calib = folder / seed.calib
    shutil.copyfile(corpus / seed.calib, calib)
    families = [f for f in FAMILY_WEIGHTS if f != "block" or seed.kind != "export"]
    while True:
        family = str(rng.choice(families, p=_normalised([FAMILY_WEIGHTS[f] for f in families])))
        try:
            if family == "bytes":
                data = (corpus / seed.model).read_bytes()
                mutation, data = _mutate_bytes(data, seeds, corpus, folder, seed, rng)
                (folder / seed.model).write_bytes(data)
                case = Case(index, seed.name, family, mutation, folder / seed.model, calib)
            else:
                model = onnx.load(str(corpus / seed.model), load_external_data=False)
                table = {"structure": STRUCTURE, "block": BLOCK, "valid": VALID}[family]
                name = list(table)[int(rng.integers(len(table)))]
                extra = table[name](model, rng, folder, seed)
                (folder / seed.model).write_bytes(model.SerializeToString())
                detail = f"{name}: {extra['what']}" if extra and extra.get("what") else name
                case = Case(index, seed.name, family, detail, folder / seed.model, calib,
                            width=(extra or {}).get("width"))
            return case
        except Skip:
            for path in folder.iterdir():  # undo a partly written mutation, keep the links
                if path.name not in seed.side_files and path.name != seed.calib:
                    path.unlink() if path.is_file() or path.is_symlink() else shutil.rmtree(path)
            for side in seed.side_files:
                if not (folder / side).exists():
                    shutil.copyfile(corpus / side, folder / side)


def _normalised(values):
    values = np.asarray(values, dtype=float)
    return values / values.sum()


def _pick(rng, items):
    items = list(items)
    if not items:
        raise Skip
    return items[int(rng.integers(len(items)))]


# ----- bytes ------------------------------------------------------------------------------------------
def _mutate_bytes(data: bytes, seeds, corpus: Path, folder: Path, seed, rng) -> tuple[str, bytes]:
    kind = _pick(rng, ["truncate", "flip", "flip_head", "splice", "zero", "insert", "duplicate", "side_file"])
    buf = bytearray(data)
    if kind == "truncate":
        cut = int(rng.integers(0, len(buf)))
        return f"truncate to {cut} of {len(buf)} bytes", bytes(buf[:cut])
    if kind in ("flip", "flip_head"):
        count = int(rng.integers(1, 9))
        span = min(len(buf), 1024) if kind == "flip_head" else len(buf)
        for pos in rng.integers(0, span, size=count):
            buf[int(pos)] ^= 1 << int(rng.integers(8))
        return f"{count} bit flips{' in the first KiB' if kind == 'flip_head' else ''}", bytes(buf)
    if kind == "splice":
        other = _pick(rng, [s for s in seeds if s.name != "minilm"])
        donor = (corpus / other.model).read_bytes()
        start, length = int(rng.integers(0, len(donor))), int(rng.integers(1, 4096))
        at = int(rng.integers(0, len(buf)))
        piece = donor[start:start + length]
        return f"splice {len(piece)} bytes of {other.name} at {at}", bytes(buf[:at] + piece + buf[at + len(piece):])
    if kind == "zero":
        at, length = int(rng.integers(0, len(buf))), int(rng.integers(1, 512))
        buf[at:at + length] = bytes(min(length, len(buf) - at))
        return f"zero {length} bytes at {at}", bytes(buf)
    if kind == "insert":
        at, length = int(rng.integers(0, len(buf))), int(rng.integers(1, 64))
        return f"insert {length} random bytes at {at}", bytes(buf[:at]) + rng.bytes(length) + bytes(buf[at:])
    if kind == "duplicate":
        start, length = int(rng.integers(0, len(buf))), int(rng.integers(1, 2048))
        return f"duplicate {length} bytes at {start}", bytes(buf[:start + length] + buf[start:])
    side = _pick(rng, seed.side_files)  # the external data file, truncated or flipped (a copy, not the link)
    content = bytearray((folder / side).read_bytes())
    (folder / side).unlink()
    if rng.random() < 0.5:
        cut = int(rng.integers(0, len(content)))
        (folder / side).write_bytes(bytes(content[:cut]))
        return f"side file {side} truncated to {cut} bytes", data
    for pos in rng.integers(0, len(content), size=8):
        content[int(pos)] ^= 1 << int(rng.integers(8))
    (folder / side).write_bytes(bytes(content))
    return f"side file {side}: 8 bit flips", data


# ----- structure ----------------------------------------------------------------------------------------
def _initializer(model, rng, *, external: bool | None = None) -> TensorProto:
    inits = [t for t in model.graph.initializer
             if external is None or (t.data_location == TensorProto.EXTERNAL) == external]
    return _pick(rng, inits)


def _wrong_dtype(model, rng, folder, seed):
    tensor = _initializer(model, rng)
    old = tensor.data_type
    tensor.data_type = int(_pick(rng, [TensorProto.DOUBLE, TensorProto.INT64, TensorProto.UINT8, TensorProto.FLOAT16,
                                       TensorProto.BFLOAT16, TensorProto.STRING, TensorProto.BOOL, 0, 99,
                                       TensorProto.COMPLEX64, TensorProto.INT4, TensorProto.FLOAT8E4M3FN]))
    return {"what": f"initializer '{tensor.name}' dtype {old} -> {tensor.data_type}"}


def _absurd_dims(model, rng, folder, seed):
    tensor = _initializer(model, rng)
    value = int(_pick(rng, [-1, 0, -(1 << 40), *HUGE]))
    if tensor.dims and rng.random() < 0.7:
        axis = int(rng.integers(len(tensor.dims)))
        tensor.dims[axis] = value
    else:
        tensor.dims.append(value)
    return {"what": f"initializer '{tensor.name}' dims {list(tensor.dims)}"}


def _graph_input_dims(model, rng, folder, seed):
    value = _pick(rng, [i for i in model.graph.input if i.type.HasField("tensor_type")])
    dims = value.type.tensor_type.shape.dim
    if dims and rng.random() < 0.7:
        dims[int(rng.integers(len(dims)))].dim_value = int(_pick(rng, [0, 1 << 40, 3]))
    else:
        value.type.tensor_type.elem_type = int(_pick(rng, [TensorProto.STRING, TensorProto.DOUBLE, TensorProto.INT8, 0]))
    return {"what": f"graph input '{value.name}'"}


def _missing_initializer(model, rng, folder, seed):
    tensor = _initializer(model, rng)
    model.graph.initializer.remove(tensor)
    return {"what": f"'{tensor.name}' removed"}


def _duplicate_initializer(model, rng, folder, seed):
    tensor = _initializer(model, rng, external=False)
    copy = TensorProto()
    copy.CopyFrom(tensor)
    if rng.random() < 0.5 and copy.dims:
        copy.dims[0] += 1
    model.graph.initializer.append(copy)
    return {"what": f"'{tensor.name}' twice"}


def _dangling_input(model, rng, folder, seed):
    node = _pick(rng, [n for n in model.graph.node if n.input])
    slot = int(rng.integers(len(node.input)))
    node.input[slot] = "does_not_exist"
    return {"what": f"node '{node.name}' input {slot}"}


def _cycle(model, rng, folder, seed):
    nodes = [n for n in model.graph.node if n.input and n.output]
    i = int(rng.integers(len(nodes) or 1)) if nodes else None
    if i is None:
        raise Skip
    later = nodes[i:]
    target = later[int(rng.integers(len(later)))]
    nodes[i].input[0] = target.output[0]
    return {"what": f"node '{nodes[i].name}' reads '{target.output[0]}'"}


def _shuffled_nodes(model, rng, folder, seed):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        raise Skip
    order = rng.permutation(len(nodes))
    del model.graph.node[:]
    model.graph.node.extend(nodes[int(k)] for k in order)
    return {"what": "nodes out of topological order"}


def _huge_attribute(model, rng, folder, seed):
    node = _pick(rng, [n for n in model.graph.node if any(a.type in (AttributeProto.INT, AttributeProto.INTS,
                                                                       AttributeProto.FLOAT, AttributeProto.STRING)
                                                        for a in n.attribute)])
    attr = _pick(rng, [a for a in node.attribute if a.type in (AttributeProto.INT, AttributeProto.INTS,
                                                                AttributeProto.FLOAT, AttributeProto.STRING)])
    kind = _pick(rng, ["value", "list", "string"])
    if attr.type == AttributeProto.INT or (kind == "value" and attr.type == AttributeProto.INTS):
        value = int(_pick(rng, HUGE))
        if attr.type == AttributeProto.INT:
            attr.i = value
        else:
            attr.ints[:] = [value] * max(1, len(attr.ints))
    elif attr.type == AttributeProto.INTS:
        attr.ints[:] = list(rng.integers(-(1 << 40), 1 << 40, size=100_000))
    elif attr.type == AttributeProto.FLOAT:
        attr.f = float(_pick(rng, [np.inf, -np.inf, np.nan, 3.4e38, 1e-45]))
    else:
        attr.s = b"\xff" * 1_000_000
    return {"what": f"node '{node.name}' attribute {attr.name}"}


def _opset(model, rng, folder, seed):
    kind = _pick(rng, ["default", "ir", "unknown_domain", "quweit"])
    if kind == "default":
        entry = next((e for e in model.opset_import if e.domain in ("", "ai.onnx")), None)
        if entry is None:
            raise Skip
        entry.version = int(_pick(rng, [0, 1, 7, 17, 25, 99, (1 << 31) - 1]))
        return {"what": f"default opset {entry.version}"}
    if kind == "ir":
        model.ir_version = int(_pick(rng, [0, 2, 99]))
        return {"what": f"ir_version {model.ir_version}"}
    if kind == "unknown_domain":
        node = _pick(rng, model.graph.node)
        node.domain = "com.example.unknown"
        model.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
        return {"what": f"node '{node.name}' in an unknown domain"}
    entry = next((e for e in model.opset_import if e.domain == DOMAIN), None)
    if entry is None:
        raise Skip
    entry.version = int(_pick(rng, [0, 2, 99]))
    return {"what": f"quweit opset {entry.version}"}


def _unknown_op(model, rng, folder, seed):
    node = _pick(rng, model.graph.node)
    node.op_type = _pick(rng, ["FooBar", "Gelu2", ""])
    return {"what": f"node '{node.name}' op '{node.op_type}'"}


def _external(tensor: TensorProto, location: str, *, offset: int = 0, length: int | None = None) -> None:
    if tensor.data_location != TensorProto.EXTERNAL:
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)


def _tensor_bytes(tensor: TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _external_escape(model, rng, folder, seed):
    tensor = _pick(rng, [t for t in model.graph.initializer if t.data_type != TensorProto.STRING])
    size = _tensor_bytes(tensor)
    outside = folder.parent / f"{folder.name}.outside.bin"  # exists: a read would succeed if allowed
    outside.write_bytes(b"\x01" * max(size, 1))
    kind = _pick(rng, ["dotdot", "absolute", "nested", "symlink", "dir_symlink"])
    if kind == "dotdot":
        location = f"../{outside.name}"
    elif kind == "absolute":
        location = str(outside.resolve())
    elif kind == "nested":
        location = f"sub/../../{outside.name}"
    else:
        link = folder / ("link.bin" if kind == "symlink" else "linkdir")
        os.symlink(outside if kind == "symlink" else folder.parent, link)
        location = link.name if kind == "symlink" else f"linkdir/{outside.name}"
    _external(tensor, location, length=size)
    return {"what": f"'{tensor.name}' external data at {location}"}


def _external_truncated(model, rng, folder, seed):
    tensor = _pick(rng, [t for t in model.graph.initializer if t.data_type != TensorProto.STRING])
    size = _tensor_bytes(tensor)
    kind = _pick(rng, ["short", "offset", "length", "missing", "negative", "not_a_number", "directory"])
    side = folder / "weights.bin"
    if kind == "short":
        side.write_bytes(b"\x00" * (size // 2))
        _external(tensor, side.name, length=size)
    elif kind == "offset":
        side.write_bytes(b"\x00" * size)
        _external(tensor, side.name, offset=size + int(rng.integers(1, 1 << 20)), length=size)
    elif kind == "length":
        side.write_bytes(b"\x00" * (2 * size + 8))
        _external(tensor, side.name, length=size + int(_pick(rng, [1, -1, 1 << 40])))
    elif kind == "missing":
        _external(tensor, "nowhere.bin", length=size)
    elif kind == "negative":
        side.write_bytes(b"\x00" * size)
        _external(tensor, side.name, offset=-8, length=size)
    elif kind == "not_a_number":
        _external(tensor, side.name)
        tensor.external_data[1].value = "0x10"
    else:
        (folder / "adir").mkdir()
        _external(tensor, "adir", length=size)
    return {"what": f"'{tensor.name}' external data {kind}"}


def _broken_function(model, rng, folder, seed):
    function = _pick(rng, model.functions)
    kind = _pick(rng, ["drop_node", "op", "remove", "loop_body"])
    if kind == "remove":
        model.functions.remove(function)
        return {"what": f"function {function.name} removed"}
    node = _pick(rng, function.node)
    if kind == "drop_node":
        function.node.remove(node)
        return {"what": f"function node {node.output[0] if node.output else '?'} dropped"}
    if kind == "op":
        node.op_type = _pick(rng, ["Add", "Identity", "Gather", "Nope"])
        return {"what": f"function node {node.output[0] if node.output else '?'} is {node.op_type}"}
    loop = _pick(rng, [n for n in function.node if n.op_type == "Loop"])
    body = loop.attribute[0].g
    victim = _pick(rng, body.node)
    victim.input[0] = _pick(rng, ["", "k", "bits_in", "nonexistent"])
    return {"what": f"loop body node {victim.op_type} reads '{victim.input[0]}'"}


def _outputs(model, rng, folder, seed):
    kind = _pick(rng, ["none", "rename", "empty_graph"])
    if kind == "none":
        del model.graph.output[:]
    elif kind == "rename":
        model.graph.output[0].name = "not_produced"
    else:
        del model.graph.node[:]
    return {"what": kind}


STRUCTURE: dict[str, Callable] = {
    "wrong_dtype": _wrong_dtype, "absurd_dims": _absurd_dims, "graph_input": _graph_input_dims,
    "missing_initializer": _missing_initializer, "duplicate_initializer": _duplicate_initializer,
    "dangling_input": _dangling_input, "cycle": _cycle, "node_order": _shuffled_nodes,
    "huge_attribute": _huge_attribute, "opset": _opset, "unknown_op": _unknown_op,
    "external_escape": _external_escape, "external_truncated": _external_truncated,
    "broken_function": _broken_function, "outputs": _outputs,
}


# ----- WeightlessBlock parameters (spec section 5) --------------------------------------------------------
def _block(model, rng, folder):
    node = _pick(rng, [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE])
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {p: numpy_helper.to_array(inits[name], base_dir=str(folder))
              for p, name in zip(PARAMS, node.input[1:]) if name in inits}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return node, inits, arrays, attrs


def _set_param(model, node, inits, param: str, value: np.ndarray) -> None:
    name = node.input[1 + PARAMS.index(param)]
    inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def _set_attr(node, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value, attr_type=AttributeProto.INTS
                                                    if isinstance(value, list) else None))


def _attribute_range(model, rng, folder, seed):
    node, _, arrays, attrs = _block(model, rng, folder)
    name = _pick(rng, ATTRIBUTES)
    if name == "layer_sizes":
        sizes = list(attrs["layer_sizes"])
        value = _pick(rng, [[], [0], [-5, *sizes], [sizes[-1] + 1], [1 << 31, *sizes], sizes[:-1] or [1],
                            [*sizes[:-1], sizes[-1] * 2], [1] * 5000])
    else:
        value = int(_pick(rng, [0, -1, 1, 9, 17, 64, 65537, *HUGE, int(attrs.get(name, 1)) + 1]))
    _set_attr(node, name, value)
    return {"what": f"{name} = {value if not isinstance(value, list) or len(value) < 8 else f'{len(value)} entries'}"}


def _attribute_missing_or_typed(model, rng, folder, seed):
    node, _, _, attrs = _block(model, rng, folder)
    name = _pick(rng, ATTRIBUTES)
    kind = _pick(rng, ["missing", "float", "string", "ints", "int", "tensor"])
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if kind == "float":
        node.attribute.append(helper.make_attribute(name, 4.0))
    elif kind == "string":
        node.attribute.append(helper.make_attribute(name, "six"))
    elif kind == "ints":
        node.attribute.append(helper.make_attribute(name, [4, 4]))
    elif kind == "int":
        node.attribute.append(helper.make_attribute(name, 4))
    elif kind == "tensor":
        node.attribute.append(helper.make_attribute(name, numpy_helper.from_array(np.array([4], np.int64))))
    return {"what": f"{name} {kind}"}


def _param_dtype(model, rng, folder, seed):
    node, inits, arrays, _ = _block(model, rng, folder)
    param = _pick(rng, arrays)
    value = arrays[param].astype(_pick(rng, [np.float64, np.int64, np.int16, np.uint32, np.float16, np.int8, np.bool_]))
    _set_param(model, node, inits, param, value)
    return {"what": f"{param} as {value.dtype}"}


def _param_shape(model, rng, folder, seed):
    node, inits, arrays, _ = _block(model, rng, folder)
    param = _pick(rng, arrays)
    value = arrays[param]
    kind = _pick(rng, ["flatten", "shorter", "longer", "rank_up", "empty"])
    if kind == "flatten":
        value = value.reshape(-1)
    elif kind == "shorter":
        value = value[:-1] if len(value) > 1 else value[:0]
    elif kind == "longer":
        value = np.concatenate([value, value[:1]])
    elif kind == "rank_up":
        value = value[None]
    else:
        value = value[:0]
    _set_param(model, node, inits, param, value)
    return {"what": f"{param} {kind} {list(value.shape)}"}


def _scales(model, rng, folder, seed):
    node, inits, arrays, _ = _block(model, rng, folder)
    param = _pick(rng, ["input_scale", "output_scale"])
    value = arrays[param].copy()
    value[int(rng.integers(len(value)))] = _pick(rng, [np.nan, np.inf, -np.inf, 0.0, -1.0, 2.0**25, 1e-40, -0.0])
    _set_param(model, node, inits, param, value)
    return {"what": param}


def _thresholds(model, rng, folder, seed):
    node, inits, arrays, attrs = _block(model, rng, folder)
    value = arrays["thresholds"].copy().astype(np.int64)
    i = int(rng.integers(value.shape[0]))
    qmax = (1 << (int(attrs["input_bits"]) - 1)) - 1
    if value.shape[1] > 1 and rng.random() < 0.5:
        value[i] = value[i][::-1] - 1 if value[i, 0] == value[i, -1] else value[i][::-1]
        what = f"row {i} decreasing"
    else:
        value[i, int(rng.integers(value.shape[1]))] = int(_pick(rng, [qmax + 1, -qmax - 2, 2**31 - 1, -(2**31)]))
        what = f"row {i} outside the input range"
    _set_param(model, node, inits, "thresholds", value.astype(np.int32))
    return {"what": what}


def _mapping(model, rng, folder, seed):
    node, inits, arrays, attrs = _block(model, rng, folder)
    mapping = arrays["mapping"].copy().astype(np.int64)
    sizes = list(attrs["layer_sizes"])
    k = int(rng.integers(len(sizes)))
    limit = attrs["in_features"] * attrs["thresholds_per_feature"] if k == 0 else sizes[k - 1]
    row = int(np.sum(sizes[:k])) + int(rng.integers(sizes[k]))
    value = int(_pick(rng, [limit, limit + 1, -1, -limit, -limit - 1, 2**31 - 1, -(2**31)]))
    mapping[row, int(rng.integers(mapping.shape[1]))] = value
    _set_param(model, node, inits, "mapping", mapping.astype(np.int32))
    return {"what": f"layer {k} reads bit {value} of {limit}"}


def _tables(model, rng, folder, seed):
    node, inits, arrays, attrs = _block(model, rng, folder)
    if attrs["lut_inputs"] >= 6:
        raise Skip
    tables = arrays["tables"].copy()
    tables[int(rng.integers(len(tables))), 0] |= np.uint64(1) << np.uint64(int(rng.integers(1 << attrs["lut_inputs"], 64)))
    _set_param(model, node, inits, "tables", tables)
    return {"what": "bits above 2^n"}


def _accumulator(model, rng, folder, seed):
    node, inits, arrays, _ = _block(model, rng, folder)
    param = _pick(rng, ["encoded_values", "bias"])
    value = arrays[param].copy()
    value[:] = _pick(rng, [2**31 - 1, -(2**31), 2**30])
    _set_param(model, node, inits, param, value)
    return {"what": f"{param} at {value[0]}"}


def _not_constant(model, rng, folder, seed):
    node, inits, arrays, _ = _block(model, rng, folder)
    param = _pick(rng, arrays)
    name = node.input[1 + PARAMS.index(param)]
    tensor = inits[name]
    model.graph.initializer.remove(tensor)
    model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    return {"what": f"{param} is a graph input"}


def _input_count(model, rng, folder, seed):
    node, _, _, _ = _block(model, rng, folder)
    if rng.random() < 0.5:
        del node.input[int(rng.integers(1, len(node.input)))]
        return {"what": "one input fewer"}
    node.input.append(node.input[1])
    return {"what": "one input more"}


def _x_width(model, rng, folder, seed):
    if seed.kind != "block":
        raise Skip
    node, _, _, attrs = _block(model, rng, folder)
    width = int(_pick(rng, [1, attrs["in_features"] - 1 or 2, attrs["in_features"] + 1]))
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_param = "features"
    return {"what": f"X of width {width}", "width": width}


BLOCK: dict[str, Callable] = {
    "attribute_range": _attribute_range, "attribute_missing_or_typed": _attribute_missing_or_typed,
    "param_dtype": _param_dtype, "param_shape": _param_shape, "scales": _scales, "thresholds": _thresholds,
    "mapping": _mapping, "tables": _tables, "accumulator": _accumulator, "not_constant": _not_constant,
    "input_count": _input_count, "x_width": _x_width,
}


# ----- valid variations ------------------------------------------------------------------------------------
def _perturbed_weights(model, rng, folder, seed):
    tensor = _pick(rng, [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT
                         and t.data_location != TensorProto.EXTERNAL and int(np.prod(t.dims)) > 1
                         and not t.name.startswith(tuple(f"{p}" for p in ()))])
    value = numpy_helper.to_array(tensor)
    if any(tensor.name == n for node in model.graph.node if node.domain == DOMAIN for n in node.input[1:]):
        raise Skip  # the block's own scales have their own (valid-edge) mutation
    scaled = (value * np.float32(rng.uniform(0.5, 2.0))).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(scaled, tensor.name))
    return {"what": f"'{tensor.name}' scaled"}


def _another_valid_block(model, rng, folder, seed):
    from quweit.custom_ops import random_params

    node, inits, arrays, attrs = _block(model, rng, folder)
    params = random_params(rng, in_features=attrs["in_features"], out_features=attrs["out_features"],
                           thresholds_per_feature=attrs["thresholds_per_feature"], lut_inputs=attrs["lut_inputs"],
                           layer_sizes=tuple(attrs["layer_sizes"]), input_bits=attrs["input_bits"])
    for param, value in params.arrays().items():
        _set_param(model, node, inits, param, value)
    return {"what": "random valid parameters"}


def _valid_edges(model, rng, folder, seed):
    node, inits, arrays, attrs = _block(model, rng, folder)
    bits = int(attrs["input_bits"])
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    kind = _pick(rng, ["max_scale", "threshold_ends", "accumulator_bound", "huge_output", "denormal_output",
                       "mapping_last_bit"])
    if kind == "max_scale":
        _set_param(model, node, inits, "input_scale", np.full_like(arrays["input_scale"], 2.0**24))
    elif kind == "threshold_ends":
        thr = arrays["thresholds"].copy()
        thr[:, 0], thr[:, -1] = qmin, qmax
        _set_param(model, node, inits, "thresholds", np.sort(thr, axis=1))
    elif kind == "accumulator_bound":
        values = arrays["encoded_values"].astype(np.int64)
        group = len(values) // len(arrays["bias"])
        each = (2**31 - 1) // (group + 1)
        _set_param(model, node, inits, "encoded_values", np.full(len(values), each, np.int32))
        _set_param(model, node, inits, "bias", np.full(len(arrays["bias"]), 2**31 - 1 - each * group, np.int32))
    elif kind == "huge_output":
        _set_param(model, node, inits, "output_scale", np.full_like(arrays["output_scale"], 3.0e38))
    elif kind == "denormal_output":
        _set_param(model, node, inits, "output_scale", np.full_like(arrays["output_scale"], 3e-41))
    else:
        mapping = arrays["mapping"].copy()
        mapping[: attrs["layer_sizes"][0], 0] = attrs["in_features"] * attrs["thresholds_per_feature"] - 1
        _set_param(model, node, inits, "mapping", mapping)
    return {"what": kind}


VALID: dict[str, Callable] = {"perturbed_weights": _perturbed_weights, "another_valid_block": _another_valid_block,
                              "valid_edges": _valid_edges}

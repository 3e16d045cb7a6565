"""Torch implementations of the standard ONNX ops that exported transformers use, keyed by (domain, op_type).

onnx2torch would be the field's choice, but in this environment it cannot even be imported (its NMS
converter imports torchvision, whose wheel does not match torch 2.13) and it lacks converters for
dynamo exports (Reshape allowzero, ReduceMean v18, Trilu). An op here is a plain function
`(inputs: list[Tensor | None], attrs: dict) -> Tensor | tuple[Tensor, ...]` following the ONNX spec
(opset 13-21 forms, where axes are inputs); unknown ops fail loudly with the node's name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

OpFn = Callable[[list, dict], object]
OPS: dict[tuple[str, str], OpFn] = {}

DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def register(op_type: str, domain: str = "") -> Callable[[OpFn], OpFn]:
    def add(fn: OpFn) -> OpFn:
        key = (domain, op_type)
        if key in OPS:
            raise KeyError(f"duplicate torch implementation for ONNX op {key}")
        OPS[key] = fn
        return fn
    return add


def tensor_from_proto(proto) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(proto)))


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _elementwise(op_type: str, fn) -> None:
    register(op_type)(lambda i, a: fn(*i))


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq, "Less": torch.lt,
    "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "Not": torch.logical_not, "Sqrt": torch.sqrt,
    "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Neg": torch.neg,
    "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Sin": torch.sin,
    "Cos": torch.cos, "Floor": torch.floor, "Ceil": torch.ceil, "IsNaN": torch.isnan, "Where": torch.where,
    "MatMul": torch.matmul, "Identity": lambda x: x, "Softplus": torch.nn.functional.softplus,
}.items():
    _elementwise(_name, _fn)


@register("Div")
def _div(i, a):
    x, y = i
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@register("Mod")
def _mod(i, a):
    return torch.fmod(*i) if a.get("fmod", 0) else torch.remainder(*i)


@register("IsInf")
def _isinf(i, a):
    x = i[0]
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


def _variadic(combine):
    """A variadic elementwise op (Max, Min, Sum) as a left fold of its binary form."""
    return lambda i, a: functools.reduce(combine, i)


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(torch.add))


@register("Gelu")
def _gelu(i, a):
    return torch.nn.functional.gelu(i[0], approximate=a.get("approximate", "none"))


@register("Clip")
def _clip(i, a):
    x = i[0]
    low = i[1] if len(i) > 1 and i[1] is not None else None
    high = i[2] if len(i) > 2 and i[2] is not None else None
    return torch.clamp(x, low, high)


@register("Gemm")
def _gemm(i, a):
    x, w = i[0], i[1]
    x = x.T if a.get("transA", 0) else x
    w = w.T if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        out = out + a.get("beta", 1.0) * i[2]
    return out


@register("Cast")
def _cast(i, a):
    return i[0].to(DTYPES[a["to"]])


@register("CastLike")
def _cast_like(i, a):
    return i[0].to(i[1].dtype)


@register("Constant")
def _constant(i, a):
    if "value" in a:
        return tensor_from_proto(a["value"])
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(list(a[key]), dtype=dtype)
    raise ValueError(f"Constant with attributes {sorted(a)} is not supported")


@register("ConstantOfShape")
def _constant_of_shape(i, a):
    value = tensor_from_proto(a["value"]) if "value" in a else torch.zeros(1)
    return torch.full(_ints(i[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


@register("Shape")
def _shape(i, a):
    shape = torch.tensor(i[0].shape, dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end", None)
    return shape[start:end]


@register("Size")
def _size(i, a):
    return torch.tensor(i[0].numel(), dtype=torch.int64)


@register("Reshape")
def _reshape(i, a):
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return x.reshape(shape)


@register("Flatten")
def _flatten(i, a):
    x = i[0]
    axis = a.get("axis", 1) % max(x.ndim, 1) if a.get("axis", 1) < 0 else a.get("axis", 1)
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Transpose")
def _transpose(i, a):
    x = i[0]
    return x.permute(*(a.get("perm") or list(reversed(range(x.ndim)))))


@register("Unsqueeze")
def _unsqueeze(i, a):
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 else list(a["axes"])
    rank = x.ndim + len(axes)
    for axis in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(axis)
    return x


@register("Squeeze")
def _squeeze(i, a):
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(ax % x.ndim for ax in axes))


@register("Concat")
def _concat(i, a):
    return torch.cat([t for t in i if t is not None], dim=a["axis"])


@register("Split")
def _split(i, a):
    x, axis = i[0], a.get("axis", 0)
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if sizes is None:
        parts = a["num_outputs"]
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - k * size) for k in range(parts)]
    return tuple(torch.split(x, list(sizes), dim=axis))


@register("Gather")
def _gather(i, a):
    data, index = i
    axis = a.get("axis", 0) % data.ndim
    index = torch.where(index < 0, index + data.shape[axis], index).to(torch.int64)
    out = torch.index_select(data, axis, index.reshape(-1))
    return out.reshape((*data.shape[:axis], *index.shape, *data.shape[axis + 1:]))


@register("GatherElements")
def _gather_elements(i, a):
    data, index = i
    axis = a.get("axis", 0) % data.ndim
    index = torch.where(index < 0, index + data.shape[axis], index).to(torch.int64)
    return torch.gather(data, axis, index)


@register("GatherND")
def _gather_nd(i, a):
    data, index = i
    batch = a.get("batch_dims", 0)
    depth = index.shape[-1]
    lead = data.shape[:batch]
    flat_data = data.reshape((math.prod(lead), *data.shape[batch:]))
    flat_index = index.reshape(math.prod(lead), -1, depth).to(torch.int64)
    picked = [flat_data[b][tuple(flat_index[b, :, d] for d in range(depth))] for b in range(flat_data.shape[0])]
    out = torch.stack(picked) if picked else flat_data.new_zeros((0,))
    return out.reshape((*index.shape[:-1], *data.shape[batch + depth:]))


@register("Slice")
def _slice(i, a):
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.ndim
        index = range(*slice(start, end, step).indices(x.shape[axis]))
        if step > 0:
            x = x.narrow(axis, index.start, len(index)) if step == 1 else x[(slice(None),) * axis + (
                slice(index.start, index.stop, step),)]
        else:
            x = torch.index_select(x, axis, torch.tensor(list(index), dtype=torch.int64))
    return x


@register("Expand")
def _expand(i, a):
    x, shape = i[0], _ints(i[1])
    return x.expand(torch.broadcast_shapes(x.shape, tuple(shape)))


@register("Tile")
def _tile(i, a):
    return i[0].repeat(*_ints(i[1]))


@register("Range")
def _range(i, a):
    start, limit, delta = (t.item() for t in i)
    return torch.arange(start, limit, delta, dtype=i[0].dtype)


@register("Trilu")
def _trilu(i, a):
    k = int(i[1].item()) if len(i) > 1 and i[1] is not None else 0
    return torch.triu(i[0], k) if a.get("upper", 1) else torch.tril(i[0], k)


@register("Softmax")
def _softmax(i, a):
    return torch.softmax(i[0], dim=a.get("axis", -1))


@register("LayerNormalization")
def _layer_norm(i, a):
    x = i[0]
    axis = a.get("axis", -1) % x.ndim
    scale = i[1]
    bias = i[2] if len(i) > 2 else None
    return torch.nn.functional.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def _reduce(fn):
    def run(i, a):
        x = i[0]
        axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, dim=tuple(ax % x.ndim for ax in axes), keepdim=bool(a.get("keepdims", 1)))
    return run


register("ReduceMean")(_reduce(torch.mean))
register("ReduceSum")(_reduce(torch.sum))
register("ReduceMax")(_reduce(torch.amax))
register("ReduceMin")(_reduce(torch.amin))


@register("Einsum")
def _einsum(i, a):
    return torch.einsum(a["equation"], *i)


@register("Dropout")
def _dropout(i, a):
    return i[0]


@register("CumSum")
def _cumsum(i, a):
    x, axis = i[0], int(i[1].item())
    if a.get("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if a.get("exclusive", 0):
        out = out - x
    return out.flip(axis) if a.get("reverse", 0) else out


@register("Conv")
def _conv(i, a):
    x, w = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    dims = x.ndim - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError(f"auto_pad={a['auto_pad']} is not supported")
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        raise ValueError(f"asymmetric pads {pads} are not supported")
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[dims]
    return fn(x, w, bias, stride=list(a.get("strides", [1] * dims)), padding=pads[:dims],
              dilation=list(a.get("dilations", [1] * dims)), groups=a.get("group", 1))


@register("SplitToSequence")
def _split_to_sequence(i, a):
    x, axis = i[0], a.get("axis", 0)
    split = i[1] if len(i) > 1 and i[1] is not None else None
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        return [p.squeeze(axis) for p in parts] if not a.get("keepdims", 1) else parts
    sizes = _ints(split)
    return list(torch.split(x, sizes[0] if split.ndim == 0 else sizes, dim=axis))


@register("SequenceAt")
def _sequence_at(i, a):
    return i[0][int(i[1].item())]


@register("SequenceLength")
def _sequence_length(i, a):
    return torch.tensor(len(i[0]), dtype=torch.int64)

"""The one synthetic-input policy, for when no real inputs are given (calibration, test vectors).

Per input, by its declared type and name: token ids below the vocabulary size (the rows of the
embedding table the input indexes, else 2), masks of ones, token-type ids of zeros, position ids
0..length-1, standard-normal floats; fixed axes keep their size, free ones become `samples` (axis 0)
and `length`. Axis 0 always counts samples (`runs` then splits them to a fixed batch).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from .errors import BadInputError
from .inputs import input_specs

FALLBACK_VOCAB = 2
#: Largest synthetic input made for one graph input.
MAX_SYNTHETIC_BYTES = 1 << 30


def synthetic_inputs(model: onnx.ModelProto | ir.Model, *, samples: int = 32, length: int = 16,
                     seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = embedding_rows(model)
    arrays = {}
    for spec in input_specs(model):
        if spec.dims is None:
            raise BadInputError(f"model input '{spec.name}' has no declared shape; pass real inputs")
        shape = [samples] + [d if isinstance(d, int) else length for d in spec.dims[1:]] if spec.dims else []
        size = int(np.prod(shape, dtype=object)) * (spec.dtype.itemsize if spec.dtype is not None else 8)
        if size > MAX_SYNTHETIC_BYTES:  # a declared axis is the file's word, not a size the machine must make
            raise BadInputError(f"model input '{spec.name}' is declared {list(spec.dims)}: {samples} synthetic samples "
                                f"would take {size} bytes (more than {MAX_SYNTHETIC_BYTES}); pass real inputs")
        name = spec.name.lower()
        kind = None if spec.dtype is None else spec.dtype.kind
        if kind in "iu":
            if "mask" in name:
                array = np.ones(shape, spec.dtype)
            elif "position" in name and shape:
                array = np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
            elif "type" in name:
                array = np.zeros(shape, spec.dtype)
            else:
                array = rng.integers(0, vocab.get(spec.name, FALLBACK_VOCAB), size=shape).astype(spec.dtype)
        elif kind == "b":
            array = np.ones(shape, spec.dtype)
        elif kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        else:
            raise BadInputError(f"model input '{spec.name}' has element type {spec.dtype}; no synthetic values "
                                "for it: pass real inputs")
        arrays[spec.name] = array
    return arrays


def embedding_rows(model: onnx.ModelProto | ir.Model) -> dict[str, int]:
    """Graph input name -> rows of the constant table it gathers from (the vocabulary size)."""
    rows: dict[str, int] = {}
    if isinstance(model, ir.Model):
        for node in model.graph:
            if node.op_type == "Gather" and node.domain == "" and len(node.inputs) == 2 and node.inputs[1] is not None:
                table = node.inputs[0]
                if table is not None and table.const_value is not None and table.const_value.shape:
                    name = node.inputs[1].name
                    rows[name] = min(rows.get(name, 1 << 62), int(table.const_value.shape[0]))
        return rows
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits and inits[node.input[0]].dims:
            rows[node.input[1]] = min(rows.get(node.input[1], 1 << 62), int(inits[node.input[0]].dims[0]))
    return rows

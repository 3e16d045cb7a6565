"""Real activations for test vectors: run the model in onnxruntime (through the op's ONNX-function
decomposition, so no kernel library is needed) and capture each block's input X."""

from __future__ import annotations

import numpy as np
import onnx
from quweit.custom_ops import attach_decomposition, block_nodes

from .errors import HwBackendError

_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def synthetic_inputs(model: onnx.ModelProto, rng: np.random.Generator, *, batch: int = 2, sequence: int = 64) -> dict:
    """Model inputs when none are given: token ids below 100 (valid in any vocabulary), all-one masks,
    zero token types, standard-normal floats; symbolic dims become `batch` (first) and `sequence`."""
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (batch if k == 0 else sequence)
                for k, d in enumerate(tensor.shape.dim)]
        name = value.name.lower()
        if tensor.elem_type in _INT_TYPES:
            dtype = _INT_TYPES[tensor.elem_type]
            if "mask" in name:
                feeds[value.name] = np.ones(dims, dtype=dtype)
            elif "type" in name or "position" in name:
                feeds[value.name] = np.zeros(dims, dtype=dtype)
            else:
                feeds[value.name] = rng.integers(0, 100, size=dims).astype(dtype)
        elif tensor.elem_type == onnx.TensorProto.FLOAT:
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
        else:
            raise HwBackendError(
                f"model input '{value.name}' has element type {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                "pass real inputs with --inputs FILE.npz"
            )
    return feeds


def capture_block_inputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Each block's input X as `[rows, D_in]` float32 (blocks in graph order), from one onnxruntime run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    attach_decomposition(probe)
    nodes = block_nodes(probe)
    existing = {o.name for o in probe.graph.output}
    for node in nodes:
        if node.input[0] not in existing:
            probe.graph.output.append(onnx.helper.make_value_info(node.input[0], onnx.TypeProto()))
            existing.add(node.input[0])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [node.input[0] for node in nodes]
        values = dict(zip(names, session.run(names, feeds)))
    except Exception as err:  # onnxruntime raises several unrelated types; report them all the same way
        raise HwBackendError(f"capturing block inputs in onnxruntime failed: {err}") from err
    return [
        values[node.input[0]].reshape(-1, values[node.input[0]].shape[-1]).astype(np.float32) for node in nodes
    ]

"""The one onnxruntime session factory: CPU, quiet, the quweit kernel registered when wanted, intra-op
threads, and models of any size (an in-memory model beyond protobuf's 2 GiB never becomes one proto).

An onnx-ir model is handed to onnxruntime without copying its weights through a proto: tensors that
are still memory-mapped from the model's side file stay external references (onnxruntime maps the same
file), and large in-memory tensors are passed as external initializers. No temporary files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import onnxruntime.capi.onnxruntime_pybind11_state as _ort_state

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | ir.Model
#: What onnxruntime raises when it refuses a model or a run (its own exception types, all of them): on a
#: user's model, bad input; on a model quweit made, a bug.
ONNXRUNTIME_ERRORS = tuple(c for c in vars(_ort_state).values() if isinstance(c, type) and issubclass(c, Exception))
#: Below protobuf's 2 GiB limit with room for the graph.
PROTOBUF_LIMIT = (1 << 31) - (1 << 24)
#: In-memory tensors at least this large are handed over as OrtValues instead of inside the proto.
HANDOVER_MIN_BYTES = 1 << 20
_PLACEHOLDER = "quweit-in-memory"


def session_options(threads: int | None = None, options: ort.SessionOptions | None = None, *,
                    kernel: bool | None = True, spinning: bool = True) -> ort.SessionOptions:
    """Options with the kernel library registered (`kernel` True: required; None: when built; False:
    never) and, if given, `threads` intra-op threads (the kernel runs its tiles on that pool too).

    `spinning=False` lets idle pool threads sleep instead of spinning: for sessions run in bursts between
    Python work (calibration passes), where spinning only burns the CPU that the Python part needs.
    """
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if kernel is not False:
        from quweit.runtime.session import LibraryNotBuiltError, get_library_path

        try:
            options.register_custom_ops_library(get_library_path())
        except (LibraryNotBuiltError, OSError, RuntimeError):
            if kernel:
                raise
    return options


def make_session(
    model: ModelSource,
    *,
    kernel: bool | None = None,
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    spinning: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session for `model` (path, serialized bytes, ModelProto or onnx-ir Model).

    `kernel`: None uses the quweit kernel when the library is built (else blocks run through their ONNX
    decomposition), True requires it, False never registers it. `spinning`: see `session_options`.
    """
    options = session_options(threads, options, kernel=kernel, spinning=spinning)
    keep: list = []
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() < PROTOBUF_LIMIT:
            model = model.SerializeToString()
        else:
            model = ir.serde.deserialize_model(model)
    if isinstance(model, ir.Model):
        model, keep = _ir_source(model, options)
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
    session._quweit_keep = keep  # onnxruntime reads the handed-over arrays while it lives
    return session


def _ir_source(model: ir.Model, options: ort.SessionOptions) -> tuple[bytes, list]:
    """The serialized graph of `model` with its large tensors left out of the proto (see module doc)."""
    folders = {_folder(v.const_value) for v in model.graph.initializers.values()
               if isinstance(v.const_value, ir.ExternalTensor)}
    shared_folder = folders.pop() if len(folders) == 1 else None
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    names, values, keep = [], [], []
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            if isinstance(tensor, ir.ExternalTensor) and _folder(tensor) == shared_folder:
                continue
            if tensor.nbytes < HANDOVER_MIN_BYTES:
                continue
            array = np.ascontiguousarray(tensor.numpy())
            if array.dtype.kind not in "biuf" or array.dtype.itemsize > 8:  # exotic dtypes stay in the proto
                continue
            keep.append(array)
            names.append(value.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(array))
            swapped.append((value, tensor))
            value.const_value = ir.ExternalTensor(f"{_PLACEHOLDER}/{len(names)}", 0, tensor.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    if shared_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", shared_folder)
    if names:
        options.add_external_initializers(names, values)
    return proto.SerializeToString(), keep + values


def _folder(tensor: ir.ExternalTensor) -> str:
    return str(Path(tensor.base_dir).resolve())

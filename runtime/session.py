"""Creating onnxruntime sessions that use the kernel library."""

from __future__ import annotations

import os
from typing import Sequence, Union

import onnxruntime as ort

from .libraries import get_library_path


def session_options(threads: int | None = None, options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Session options with the kernel library registered and, if given, `threads` intra-op threads.

    The kernel runs its tiles on onnxruntime's intra-op pool, so `threads` is the op's parallelism too.
    """
    options = options or ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.register_custom_ops_library(get_library_path())
    return options


ModelSource = Union[str, os.PathLike, bytes, "onnx.ModelProto"]  # noqa: F821


def make_session(
    model: ModelSource,
    *,
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """An onnxruntime session for `model` (path, serialized bytes or ModelProto) using the quweit kernel."""
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=session_options(threads, options), providers=list(providers))

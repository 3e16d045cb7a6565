"""The onnxruntime kernel of `quweit::WeightlessBlock` (C++, CPU) and helpers to use it.

`get_library_path()` is the native library's whole Python API; `make_session()` (the I/O layer's
session factory, with the kernel required) returns an onnxruntime session with it registered. Without
the library a converted model still runs through the op's ONNX-function decomposition, only slower.
`get_train_library_path()` locates the torch shim's fused training ops (`quweit.custom_ops.fused_training`),
built beside it.
"""

from __future__ import annotations

from .session import LibraryNotBuiltError, get_library_path, get_train_library_path


def make_session(model, *, threads=None, options=None, providers=("CPUExecutionProvider",)):
    """`quweit.onnxio.make_session` with the kernel required (`LibraryNotBuiltError` if it is not built)."""
    from quweit.onnxio import make_session as factory

    return factory(model, kernel=True, threads=threads, options=options, providers=providers)


def session_options(threads=None, options=None):
    """`quweit.onnxio.session_options` with the kernel registered (required)."""
    from quweit.onnxio import session_options as factory

    return factory(threads, options, kernel=True)


__all__ = ["LibraryNotBuiltError", "get_library_path", "get_train_library_path", "make_session", "session_options"]

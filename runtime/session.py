"""Locating the built kernel library and creating onnxruntime sessions that use it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import onnxruntime as ort

LIBRARY_NAME = "libquweit_ort.so"
#: Overrides the library location (e.g. a sanitizer build); must name an existing file.
LIBRARY_ENV = "QUWEIT_ORT_LIBRARY"


class LibraryNotBuiltError(FileNotFoundError):
    """The kernel library is missing: the package was installed without its native build."""


def get_library_path() -> str:
    """Absolute path of `libquweit_ort.so`, for `SessionOptions.register_custom_ops_library`."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise LibraryNotBuiltError(f"{LIBRARY_ENV}={override} does not name a file")
        return str(path.resolve())
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    if not path.is_file():
        raise LibraryNotBuiltError(
            f"{path} is missing: build it with `pip install .` (or `pip install -e .`) from the quweit source tree"
        )
    return str(path)


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

"""The onnxruntime kernel of `quweit::WeightlessBlock` (C++, CPU) and helpers to use it.

`get_library_path()` is the native library's whole Python API; `make_session()` returns an
onnxruntime session with it registered. Without the library a converted model still runs through
the op's ONNX-function decomposition, only slower.
"""

from .session import LibraryNotBuiltError, get_library_path, make_session, session_options

__all__ = ["LibraryNotBuiltError", "get_library_path", "make_session", "session_options"]

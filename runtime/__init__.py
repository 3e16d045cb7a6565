"""The onnxruntime kernel of `quweit::WeightlessBlock` (C++, CPU) and helpers to use it.

`get_library_path()` is the kernel library's whole Python API; `make_session()` returns an
onnxruntime session with it registered. Without the library a converted model still runs through
the op's ONNX-function decomposition, only slower. `get_train_library_path()` locates the torch shim's
fused training ops (`quweit.custom_ops.fused_training`), built beside it.
"""

from .libraries import LibraryNotBuiltError, get_library_path, get_train_library_path
from .session import make_session, session_options

__all__ = ["LibraryNotBuiltError", "get_library_path", "get_train_library_path", "make_session", "session_options"]

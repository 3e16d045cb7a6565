"""Locating the built native libraries: the kernel (`libquweit_ort.so`) and the torch shim's fused training
ops (`libquweit_train.so`), both built into this package by `pip install .` or named by an environment
variable (a sanitizer or debugging build). Sessions that use the kernel come from the one session factory,
`quweit.onnxio.make_session` (re-exported here as `quweit.runtime.make_session`)."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "libquweit_ort.so"
#: Overrides the library location (e.g. a sanitizer build); must name an existing file.
LIBRARY_ENV = "QUWEIT_ORT_LIBRARY"
TRAIN_LIBRARY_NAME = "libquweit_train.so"
#: Overrides the training library's location; must name an existing file.
TRAIN_LIBRARY_ENV = "QUWEIT_TRAIN_LIBRARY"


class LibraryNotBuiltError(FileNotFoundError):
    """A native library is missing: the package was installed without its native build."""


def _find(name: str, env: str) -> str:
    override = os.environ.get(env)
    if override:
        path = Path(override)
        if not path.is_file():
            raise LibraryNotBuiltError(f"{env}={override} does not name a file")
        return str(path.resolve())
    path = Path(__file__).resolve().parent / name
    if not path.is_file():
        raise LibraryNotBuiltError(
            f"{path} is missing: build it with `pip install .` (or `pip install -e .`) from the quweit source tree"
        )
    return str(path)


def get_library_path() -> str:
    """Absolute path of `libquweit_ort.so`, for `SessionOptions.register_custom_ops_library`."""
    return _find(LIBRARY_NAME, LIBRARY_ENV)


def get_train_library_path() -> str:
    """Absolute path of `libquweit_train.so`, the torch shim's fused training ops (loaded with ctypes)."""
    return _find(TRAIN_LIBRARY_NAME, TRAIN_LIBRARY_ENV)

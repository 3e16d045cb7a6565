"""Where quweit's native libraries are: built into this package by `pip install .` (setup.py ->
native_build.py), or named by an environment variable (a sanitizer or debugging build)."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "libquweit_ort.so"
#: Overrides the kernel library's location (e.g. a sanitizer build); must name an existing file.
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
    """Absolute path of `libquweit_train.so`, the torch shim's fused training ops (ctypes)."""
    return _find(TRAIN_LIBRARY_NAME, TRAIN_LIBRARY_ENV)

"""Locating the built kernel library. Sessions that use it come from the one session factory,
`quweit.onnxio.make_session` (re-exported here as `quweit.runtime.make_session`)."""

from __future__ import annotations

import os
from pathlib import Path

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

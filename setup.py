"""Builds the native onnxruntime kernel (runtime/src -> quweit/runtime/libquweit_ort.so) during
`pip install .` and `pip install -e .`; all metadata lives in pyproject.toml.

Set QUWEIT_SKIP_KERNEL=1 to install without the library (no compiler at hand); converted models then run
through the op's ONNX-function decomposition, slower. The library is not a Python extension module: setuptools' build_ext is only the hook that places it
inside the `quweit.runtime` package (wheel or editable tree). The compile itself is
runtime/native_build.py (g++, vendored onnxruntime headers or $QUWEIT_ORT_INCLUDE_DIR).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
LIBRARY_MODULE = "quweit.runtime.libquweit_ort"


def _native_build():
    spec = importlib.util.spec_from_file_location("quweit_native_build", ROOT / "runtime" / "native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildKernelLibrary(build_ext):
    """Compile the custom-op library with native_build instead of the extension-module toolchain."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name or with its last component only (distutils' get_ext_fullpath).
        parts = fullname.split(".")
        if parts[-1] == LIBRARY_MODULE.rsplit(".", 1)[-1]:
            return os.path.join(*parts[:-1], "libquweit_ort.so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if ext.name != LIBRARY_MODULE:
            return super().build_extension(ext)
        if os.environ.get("QUWEIT_SKIP_KERNEL") == "1":
            # For machines without a C++17 compiler: models still run through the op's decomposition.
            print("QUWEIT_SKIP_KERNEL=1: not building the onnxruntime kernel (quweit.runtime.get_library_path() will raise)")
            return
        native = _native_build()
        try:
            native.build_library(Path(self.get_ext_fullpath(ext.name)))
        except native.NativeBuildError as error:
            raise SystemExit(f"error: building the quweit onnxruntime kernel: {error}") from None


setup(
    ext_modules=[
        Extension(
            LIBRARY_MODULE,
            sources=[f"runtime/src/{name}" for name in _native_build().SOURCES],
            depends=[str(p.relative_to(ROOT)) for p in (ROOT / "runtime" / "src").glob("*.h")],
        )
    ],
    cmdclass={"build_ext": BuildKernelLibrary},
)

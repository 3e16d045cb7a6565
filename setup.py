"""Builds the native libraries during `pip install .` and `pip install -e .` (runtime/src ->
quweit/runtime/libquweit_ort.so, the onnxruntime kernel, and quweit/runtime/libquweit_train.so, the torch
shim's fused training ops); all metadata lives in pyproject.toml.

Set QUWEIT_SKIP_KERNEL=1 to install without them (no compiler at hand); converted models then run
through the op's ONNX-function decomposition and blocks train on the pure-torch path, both slower. The
libraries are not Python extension modules: setuptools' build_ext is only the hook that places them
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
PACKAGE = "quweit.runtime"


def _native_build():
    spec = importlib.util.spec_from_file_location("quweit_native_build", ROOT / "runtime" / "native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _libraries() -> dict:
    """Extension module name (`quweit.runtime.libquweit_ort`) -> native_build.NativeLibrary."""
    return {f"{PACKAGE}.{library.name[:-3]}": library for library in _native_build().LIBRARIES}


class BuildKernelLibrary(build_ext):
    """Compile the native libraries with native_build instead of the extension-module toolchain."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name or with its last component only (distutils' get_ext_fullpath).
        parts = fullname.split(".")
        if parts[-1] in {name.rsplit(".", 1)[-1] for name in _libraries()}:
            return os.path.join(*parts[:-1], parts[-1] + ".so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        libraries = _libraries()
        if ext.name not in libraries:
            return super().build_extension(ext)
        library = libraries[ext.name]
        if os.environ.get("QUWEIT_SKIP_KERNEL") == "1":
            # For machines without a C++17 compiler: models still run through the op's decomposition, and
            # blocks train on the pure-torch path.
            print(f"QUWEIT_SKIP_KERNEL=1: not building {library.name}")
            return
        native = _native_build()
        try:
            native.build_library(Path(self.get_ext_fullpath(ext.name)), library=library)
        except native.NativeBuildError as error:
            raise SystemExit(f"error: building {library.name}: {error}") from None


setup(
    ext_modules=[
        Extension(
            name,
            sources=[f"runtime/src/{source}" for source in library.sources],
            depends=[str(p.relative_to(ROOT)) for p in (ROOT / "runtime" / "src").glob("*.h")],
        )
        for name, library in _libraries().items()
    ],
    cmdclass={"build_ext": BuildKernelLibrary},
)

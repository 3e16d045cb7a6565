"""The native libraries' tests pass under AddressSanitizer with no report: the kernel's (test_kernel.py:
exactness and every invalid-parameter case) and the fused training ops' (test_fused_training.py). A
sanitized copy of each library is built from runtime/src and its tests run in a child pytest with libasan
preloaded (Python itself is not instrumented)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def native_build():
    spec = importlib.util.spec_from_file_location("quweit_native_build", ROOT / "runtime" / "native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gcc_library(name: str) -> str:
    found = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(found) or not os.path.isfile(found):
        pytest.fail(f"{name} not found (g++ -print-file-name gave {found!r}); install gcc's {name}")
    return found


@pytest.mark.parametrize("library, variable, tests", [
    ("ORT_KERNEL", "QUWEIT_ORT_LIBRARY", "test_kernel.py"),
    ("TRAIN_OPS", "QUWEIT_TRAIN_LIBRARY", "test_fused_training.py"),
])
def test_library_tests_pass_under_address_sanitizer(tmp_path, library, variable, tests):
    native = native_build()
    library = native.build_library(tmp_path / "libquweit_asan.so", sanitize="address", library=getattr(native, library))
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    assert "libasan" in needed, "the sanitized build does not link libasan"
    env = dict(
        os.environ,
        # libstdc++ too: ASan's __cxa_throw interceptor needs it loaded at start-up, and Python does not
        # link it (without it, the first C++ exception - every invalid-parameter case - aborts).
        LD_PRELOAD=f"{gcc_library('libasan.so')} {gcc_library('libstdc++.so')}",
        **{variable: str(library)},
        QUWEIT_KERNEL_EXAMPLES="40",
        # Leak checking would report CPython's and onnxruntime's intentional process-lifetime allocations.
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests" / tests), "-q", "-x", "-p", "no:cacheprovider"],
        cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert "AddressSanitizer" not in output, output[-6000:]
    assert result.returncode == 0, output[-6000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

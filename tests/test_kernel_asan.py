"""The native libraries' tests pass under AddressSanitizer and UndefinedBehaviorSanitizer with no report:
the kernel's (test_kernel.py: exactness and every invalid-parameter case) and the fused training ops'
(test_fused_training.py). A sanitized copy of each library is built from runtime/src (once per source
content, shared with bench/fuzz.py) and its tests run in a child pytest with the ASan runtime preloaded
(Python itself is not instrumented)."""

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


@pytest.mark.parametrize("library, variable, tests", [
    ("ORT_KERNEL", "QUWEIT_ORT_LIBRARY", "test_kernel.py"),
    ("TRAIN_OPS", "QUWEIT_TRAIN_LIBRARY", "test_fused_training.py"),
])
def test_library_tests_pass_under_sanitizers(library, variable, tests):
    build = native_build()
    path = build.cached_library("address,undefined", library=getattr(build, library))
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=False).stdout
    assert "libasan" in needed and "libubsan" in needed, "the sanitized build does not link libasan and libubsan"
    env = dict(os.environ, LD_PRELOAD=build.sanitizer_preload(), QUWEIT_KERNEL_EXAMPLES="40",
               **{variable: str(path)}, **build.SANITIZER_ENV)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests" / tests), "-q", "-x", "-p", "no:cacheprovider"],
        cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    output = result.stdout + result.stderr
    assert "Sanitizer" not in output and "runtime error:" not in output, output[-6000:]
    assert result.returncode == 0, output[-6000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

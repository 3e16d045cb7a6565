"""Build quweit's native libraries from runtime/src with the system's g++.

- `libquweit_ort.so`: the onnxruntime custom-op kernel (needs the onnxruntime API headers);
- `libquweit_train.so`: the fused training ops of the torch shim (plain C ABI, called through ctypes by
  custom_ops/fused_training.py; needs no torch or onnxruntime headers).

One description of the build, used by setup.py (`pip install .` / `pip install -e .`), by the tests that
build the training library when it is missing, and by the sanitizer tests
(`build_library(..., sanitize="address")`). Standard library only: setup.py loads this file before any
dependency is installed.

The shipped build targets the generic x86-64 baseline; only tile_eval_avx2.cc and tile_eval_avx512.cc
are compiled with wider instruction sets, and the kernel picks among them at run time (never
-march=native). FMA contraction is off everywhere: the op's arithmetic must round exactly as specified.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

LIBRARY_NAME = "libquweit_ort.so"
SOURCE_DIR = Path(__file__).resolve().parent / "src"
VENDORED_INCLUDE = Path(__file__).resolve().parent / "third_party" / "onnxruntime" / "include"
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
#: The AVX2/AVX-512 evaluators exist on x86-64 only; elsewhere the portable one is the whole kernel.
SOURCES = ("custom_op.cc", "block_params.cc", "block_layouts.cc", "tile_eval_generic.cc") + (
    ("tile_eval_avx2.cc", "tile_eval_avx512.cc") if X86_64 else ())
ISA_FLAGS = {
    "tile_eval_avx2.cc": ["-mavx2"],
    "tile_eval_avx512.cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
}
COMMON_FLAGS = [
    "-std=c++17", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-fno-fast-math",
    "-Wall", "-Wextra", "-Wno-psabi",
] + (["-march=x86-64", "-mtune=generic"] if X86_64 else [])
OPTIMIZE = {
    None: ["-O3", "-DNDEBUG"],
    "address": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    # undefined behaviour aborts (no recovery), so a fuzzer sees it as a crash
    "address,undefined": ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                          "-fno-omit-frame-pointer"],
}
LINK = {
    # Static libstdc++: the library must not depend on the user's C++ runtime version; -z defs proves
    # that nothing (no onnxruntime symbol in particular) is left to resolve at load time.
    None: ["-shared", "-static-libstdc++", "-static-libgcc", "-Wl,-z,defs", "-Wl,-O1"],
    "address": ["-shared", "-fsanitize=address"],
    "address,undefined": ["-shared", "-fsanitize=address,undefined"],
}
#: Sanitizer options for a process that loads a sanitized build: stop at the first report (leak checking
#: would report CPython's and onnxruntime's intentional process-lifetime allocations).
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:abort_on_error=1",
}
HEADER = "onnxruntime_lite_custom_op.h"


class NativeLibrary(NamedTuple):
    """One shared library: its file name, sources in runtime/src, exported-symbol script, extra flags.

    (A NamedTuple, not a dataclass: setup.py loads this file without registering it in sys.modules.)"""

    name: str
    sources: tuple[str, ...]
    exports: str
    onnxruntime_headers: bool
    flags: tuple[str, ...] = ()


ORT_KERNEL = NativeLibrary(LIBRARY_NAME, SOURCES, "exports.map", onnxruntime_headers=True)
#: Runs its own threads (std::thread), hence -pthread.
TRAIN_OPS = NativeLibrary("libquweit_train.so", ("train_block.cc",), "train_exports.map",
                          onnxruntime_headers=False, flags=("-pthread",))
LIBRARIES = (ORT_KERNEL, TRAIN_OPS)


class NativeBuildError(RuntimeError):
    """The library could not be built; the message says which step and why."""


def include_dir() -> Path:
    """onnxruntime API headers: $QUWEIT_ORT_INCLUDE_DIR if set, else the vendored copy (API 21)."""
    chosen = os.environ.get("QUWEIT_ORT_INCLUDE_DIR")
    path = Path(chosen) if chosen else VENDORED_INCLUDE
    if not (path / HEADER).is_file():
        source = "QUWEIT_ORT_INCLUDE_DIR" if chosen else "the vendored headers"
        raise NativeBuildError(
            f"{source}: {path} has no {HEADER}; point QUWEIT_ORT_INCLUDE_DIR at an onnxruntime include "
            "folder (>= 1.21) or run runtime/third_party/fetch_onnxruntime_headers.sh"
        )
    return path


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "g++"))


def _run(command: list[str], step: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NativeBuildError(f"{step} failed ({shlex.join(command)}):\n{result.stderr[-4000:]}")


def build_library(output: Path, *, sanitize: str | None = None, jobs: int | None = None,
                  library: NativeLibrary = ORT_KERNEL) -> Path:
    """Compile and link `library` (default: the onnxruntime kernel) to `output` (written atomically)."""
    if sanitize not in OPTIMIZE:
        raise NativeBuildError(f"sanitize must be one of {sorted(k for k in OPTIMIZE if k)} or None, got {sanitize!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cxx = _compiler()
    headers = [f"-I{include_dir()}"] if library.onnxruntime_headers else []
    flags = COMMON_FLAGS + OPTIMIZE[sanitize] + list(library.flags) + headers + [f"-I{SOURCE_DIR}"]
    link = LINK[sanitize] + list(library.flags) + (
        [f"-Wl,--version-script={SOURCE_DIR / library.exports}"] if sanitize is None else [])
    with tempfile.TemporaryDirectory(prefix="quweit-build-") as tmp:
        objects = [Path(tmp) / (name + ".o") for name in library.sources]

        def compile_one(name: str, obj: Path) -> None:
            command = cxx + flags + ISA_FLAGS.get(name, []) + ["-c", str(SOURCE_DIR / name), "-o", str(obj)]
            _run(command, f"compiling {name}")

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            for future in [pool.submit(compile_one, n, o) for n, o in zip(library.sources, objects)]:
                future.result()
        partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            _run(cxx + OPTIMIZE[sanitize] + [str(o) for o in objects] + link + ["-o", str(partial)], "linking")
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    return output


def cached_library(sanitize: str | None, cache_dir: Path | None = None, library: NativeLibrary = ORT_KERNEL) -> Path:
    """`build_library` once per content of the sources, headers, flags and compiler: later calls (other
    tests, the fuzzer) reuse the file. Cache: $QUWEIT_BUILD_CACHE, else ~/.cache/quweit."""
    if sanitize not in OPTIMIZE:
        raise NativeBuildError(f"sanitize must be one of {sorted(k for k in OPTIMIZE if k)} or None, got {sanitize!r}")
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()) + sorted(include_dir().iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    version = subprocess.run([*_compiler(), "--version"], capture_output=True, text=True).stdout
    digest.update(repr((library, COMMON_FLAGS, OPTIMIZE[sanitize], LINK[sanitize], ISA_FLAGS, version)).encode())
    folder = Path(cache_dir or os.environ.get("QUWEIT_BUILD_CACHE") or Path.home() / ".cache" / "quweit")
    tag = (sanitize or "release").replace(",", "-")
    stem = library.name.removesuffix(".so")
    output = folder / f"{stem}.{tag}.{digest.hexdigest()[:16]}.so"
    return output if output.is_file() else build_library(output, sanitize=sanitize, library=library)


def sanitizer_preload() -> str:
    """LD_PRELOAD for a Python process that loads a sanitized build: the ASan runtime must come first, and
    libstdc++ with it (ASan's __cxa_throw interceptor needs it at start-up; Python does not link it)."""
    found = []
    for name in ("libasan.so", "libstdc++.so"):
        path = subprocess.run([*_compiler(), f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.isfile(path):
            raise NativeBuildError(f"{name} not found (g++ -print-file-name gave {path!r}); install gcc's {name}")
        found.append(path)
    return " ".join(found)


def main() -> None:
    """`python runtime/native_build.py OUTPUT [address]`: build by hand (debugging, CI); the library is
    chosen by OUTPUT's file name (`libquweit_train*.so`: the training ops, otherwise the kernel)."""
    import sys

    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: native_build.py OUTPUT.so [address]")
    output = Path(sys.argv[1])
    library = TRAIN_OPS if output.name.startswith("libquweit_train") else ORT_KERNEL
    try:
        print(build_library(output, sanitize=sys.argv[2] if len(sys.argv) == 3 else None, library=library))
    except NativeBuildError as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()

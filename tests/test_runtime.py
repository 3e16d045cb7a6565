"""`quweit.runtime`: the library is found, registered by the session factory, exports only its entry
point, needs no onnxruntime at link time, and its build reports bad header locations clearly."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quweit.custom_ops import evaluate, make_block_model, random_params
from quweit.runtime import LibraryNotBuiltError, get_library_path, make_session, session_options

ROOT = Path(__file__).resolve().parents[1]


def small_block():
    return random_params(np.random.default_rng(3), in_features=5, out_features=3, thresholds_per_feature=2,
                         lut_inputs=3)


def test_library_path_is_inside_the_package_and_exports_only_the_entry_point():
    path = Path(get_library_path())
    assert path.is_file() and path.name == "libquweit_ort.so"
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    assert [line.split()[-1] for line in symbols.stdout.splitlines()] == ["RegisterCustomOps"]
    needed = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    assert "onnxruntime" not in needed and "libstdc++" not in needed


@pytest.mark.parametrize("form", ["path", "bytes", "proto"])
def test_make_session_accepts_path_bytes_and_model(form, tmp_path):
    params = small_block()
    model = make_block_model(params)
    del model.functions[:]  # only the kernel can run it
    source = {"proto": model, "bytes": model.SerializeToString()}.get(form)
    if form == "path":
        source = tmp_path / "block.onnx"
        source.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((2, 7, 5)).astype(np.float32)
    y = make_session(source, threads=1).run(None, {"X": x})[0]
    assert np.array_equal(y.view(np.int32), evaluate(params, x).view(np.int32))


def test_session_options_sets_threads_and_rejects_nonsense():
    assert session_options(threads=2).intra_op_num_threads == 2
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        session_options(threads=0)
    assert isinstance(session_options(), ort.SessionOptions)


def test_library_override_must_name_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("QUWEIT_ORT_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(LibraryNotBuiltError, match="missing.so does not name a file"):
        get_library_path()


def test_build_names_a_bad_header_folder(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("native_build", ROOT / "runtime" / "native_build.py")
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    monkeypatch.setenv("QUWEIT_ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(native.NativeBuildError, match=f"QUWEIT_ORT_INCLUDE_DIR: {tmp_path} has no onnxruntime_lite_custom_op.h"):
        native.build_library(tmp_path / "lib.so")
    assert not (tmp_path / "lib.so").exists()


def test_only_the_dispatched_tile_code_uses_wide_vector_registers():
    """The shipped build targets baseline x86-64: AVX/AVX-512 registers appear only in the AVX2 and
    AVX-512 evaluators (all three paths), which the kernel calls after checking the CPU (no -march=native)."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", get_library_path()],
                             capture_output=True, text=True, check=True).stdout
    function, offenders, wide = "", set(), 0
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1][:-2]
        elif "%ymm" in line or "%zmm" in line:
            wide += 1
            name = function.split("(", 1)[0].removeprefix("void ")  # templates show their return type
            if not name.startswith(("quweit::avx2::", "quweit::avx512::")):
                offenders.add(function)
    assert wide > 0, "no AVX code at all: the dispatched paths are missing"
    assert not offenders, sorted(offenders)[:10]

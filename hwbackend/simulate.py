"""Run generated testbenches in a simulator (Icarus Verilog by default, Verilator on request) and read
their verdict: the RESULT line and every MISMATCH line (block, vector, output, got, expected)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import HwBackendError

SIMULATORS = ("icarus", "verilator")
_TOOLS = {"icarus": ("iverilog", "vvp"), "verilator": ("verilator",)}
_RESULT = re.compile(r"RESULT block=(\S+) vectors=(\d+) mismatches=(\d+)")
_MISMATCH = re.compile(r"MISMATCH block=(\S+) vector=(\d+) output=(\d+) got=(-?\d+) expected=(-?\d+)")


@dataclasses.dataclass(frozen=True)
class Mismatch:
    block: str
    vector: int
    output: int
    got: int
    expected: int

    def __str__(self) -> str:
        return f"block {self.block} vector {self.vector} output {self.output}: got {self.got}, expected {self.expected}"


@dataclasses.dataclass(frozen=True)
class SimResult:
    block: str
    simulator: str
    vectors: int
    mismatches: tuple[Mismatch, ...]
    mismatch_count: int

    @property
    def passed(self) -> bool:
        return self.mismatch_count == 0 and self.vectors > 0


def require_simulator(simulator: str) -> None:
    """Fail early, with the tool to install, when the simulator is unknown or missing."""
    if simulator not in _TOOLS:
        raise HwBackendError(f"unknown simulator '{simulator}'; choose one of {', '.join(SIMULATORS)}")
    for tool in _TOOLS[simulator]:
        if shutil.which(tool) is None:
            raise HwBackendError(
                f"simulator '{simulator}' needs '{tool}' on PATH; install it (Debian: apt-get install -y "
                f"{'iverilog' if simulator == 'icarus' else 'verilator'})"
            )


def _run(command: list[str], cwd: Path, what: str, timeout: float) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise HwBackendError(f"{what} timed out after {timeout:.0f} s: {' '.join(command)}") from err
    if done.returncode != 0:
        raise HwBackendError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-4000:]}")
    return done.stdout


def simulate(
    sources: list[Path], top: str, workdir: Path, *, simulator: str = "icarus", timeout: float = 1200.0
) -> SimResult:
    """Compile `sources` with testbench module `top` and run it in `workdir` (where its vector files are)."""
    require_simulator(simulator)
    workdir = Path(workdir)
    build = workdir / f"{top}.simbuild"
    build.mkdir(exist_ok=True)
    paths = [str(Path(s).resolve()) for s in sources]
    if simulator == "icarus":
        binary = build / f"{top}.vvp"
        _run(["iverilog", "-g2001", "-o", str(binary), "-s", top, *paths], workdir, "iverilog", timeout)
        output = _run(["vvp", "-n", str(binary)], workdir, "vvp", timeout)
    else:
        jobs = str(max(1, os.cpu_count() or 1))
        _run(["verilator", "--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-j", jobs,
              "--top-module", top, "--Mdir", str(build), "-o", top, *paths], workdir, "verilator", timeout)
        output = _run([str(build / top)], workdir, "verilated model", timeout)
    return parse_output(output, top, simulator)


def parse_output(output: str, top: str, simulator: str) -> SimResult:
    """The testbench's verdict; a run without a RESULT line (crash, early $finish) is an error."""
    found = _RESULT.search(output)
    if not found:
        raise HwBackendError(f"testbench {top} ({simulator}) printed no RESULT line:\n{output[-2000:]}")
    mismatches = tuple(
        Mismatch(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
        for m in _MISMATCH.finditer(output)
    )
    return SimResult(found.group(1), simulator, int(found.group(2)), mismatches, int(found.group(3)))

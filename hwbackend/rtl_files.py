"""Writing an RTL project to a folder: the shared LUT primitive, one file per block, the top module, and
per block a testbench with its vector files; then simulating it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .rtl import RtlBlock, render_lut, render_testbench, render_top
from .simulate import SimResult, simulate
from .vectors import vector_files

LUT_FILE = "quweit_lut.v"


def write_rtl(blocks: list[RtlBlock], outdir: Path, *, top: str | None = "quweit_top") -> list[Path]:
    """Write `quweit_lut.v`, `<block>.v` for each block and (several blocks, or `top` given) `<top>.v`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = [outdir / LUT_FILE]
    files[0].write_text(render_lut())
    for block in blocks:
        path = outdir / f"{block.name}.v"
        path.write_text(block.text())
        files.append(path)
    if top is not None and len(blocks) > 1:
        path = outdir / f"{top}.v"
        path.write_text(render_top(top, blocks))
        files.append(path)
    return files


def write_testbench(block: RtlBlock, q: np.ndarray, outdir: Path) -> tuple[Path, np.ndarray]:
    """Write `<block>_tb.v`, `<block>_in.hex` and `<block>_expected.hex` for q vectors `[V, D_in]`."""
    outdir = Path(outdir)
    q_text, acc_text, expected = vector_files(block.params, q)
    (outdir / f"{block.name}_in.hex").write_text(q_text)
    (outdir / f"{block.name}_expected.hex").write_text(acc_text)
    bench = outdir / f"{block.name}_tb.v"
    bench.write_text(render_testbench(block, len(q), f"{block.name}_in.hex", f"{block.name}_expected.hex"))
    return bench, expected


def simulate_block(block: RtlBlock, outdir: Path, *, simulator: str = "icarus") -> SimResult:
    """Simulate `<block>_tb` (written by `write_testbench`) with the block's sources in `outdir`."""
    outdir = Path(outdir)
    sources = [outdir / LUT_FILE, outdir / f"{block.name}.v", outdir / f"{block.name}_tb.v"]
    return simulate(sources, f"{block.name}_tb", outdir, simulator=simulator)


def simulate_gate_level(block: RtlBlock, netlists: list[Path], outdir: Path, *, simulator: str = "icarus") -> SimResult:
    """Run the block's testbench (written by `write_testbench`) on its synthesized gate netlists: each
    chunk's `gates.v` (yosys generic gates) with the block module wiring them (registers and wires only)."""
    outdir = Path(outdir)
    wiring = next(m.text for m in block.modules() if m.stage == "block")
    path = outdir / f"{block.name}_gates.v"
    path.write_text("".join(Path(n).read_text() for n in netlists) + wiring)
    return simulate([path, outdir / f"{block.name}_tb.v"], f"{block.name}_tb", outdir, simulator=simulator)

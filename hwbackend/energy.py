"""Energy per token from toggle counts, with every constant stated and sourced.

Energy per operation (Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V): int8 add 0.03 pJ,
int32 add 0.1 pJ, int8 multiply 0.2 pJ, int32 multiply 3.1 pJ, fp32 add 0.9 pJ, fp32 multiply 3.7 pJ; a
64-bit read from an 8 KB SRAM 10 pJ. No calibrated open power model ships offline, so the energy of one
gate-output toggle is calibrated on the same flow: an int8 adder and an int8 x int8 multiplier are
synthesized to the same generic gates, driven by uniform random operands, and their toggles per operation
matched to Horowitz's energies. The larger of the two energies per toggle is used for every circuit
(the LUT block and the dense baseline alike), which does not favour the block: only the analytic SRAM reads
do not scale with it. Every gate type costs the same per output toggle (a stated simplification).
"""

from __future__ import annotations

import functools

import numpy as np

from .gatesim import load_netlist, simulate, to_bits
from .synth import synthesize_module

SOURCE = "Horowitz, ISSCC 2014 (45 nm): energy per operation"
PJ = {"int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "int8_mul": 0.2, "int32_mul": 3.1, "fp32_add": 0.9,
      "fp32_mul": 3.7, "sram_8kb_read_64b": 10.0}
CALIBRATION_VECTORS = 4001

_ADDER = """module quweit_cal_add (input wire signed [7:0] a, input wire signed [7:0] b, output wire signed [7:0] y);
  assign y = a + b;
endmodule
"""
_MULTIPLIER = """module quweit_cal_mul (input wire signed [7:0] a, input wire signed [7:0] b, output wire signed [15:0] y);
  assign y = a * b;
endmodule
"""


def _toggles_per_op(module: str, text: str) -> float:
    result = synthesize_module(module, text)
    netlist = load_netlist(result.netlist / "netlist.json")
    rng = np.random.default_rng(0)
    drive = {name: to_bits(rng.integers(-128, 128, CALIBRATION_VECTORS), len(bits))
             for name, bits in netlist.inputs.items()}
    _, toggles = simulate(netlist, drive)
    return sum(toggles.values()) / (CALIBRATION_VECTORS - 1)


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """Energy per gate-output toggle (pJ) from the int8 adder and multiplier of the same flow."""
    add = _toggles_per_op("quweit_cal_add", _ADDER)
    mul = _toggles_per_op("quweit_cal_mul", _MULTIPLIER)
    per_add, per_mul = PJ["int8_add"] / add, PJ["int8_mul"] / mul
    return {
        "source": SOURCE, "pj_per_op": PJ,
        "int8_add_toggles": round(add, 2), "int8_mul_toggles": round(mul, 2),
        "pj_per_toggle_from_add": per_add, "pj_per_toggle_from_mul": per_mul,
        "pj_per_toggle": max(per_add, per_mul),
        "method": "generic gates (yosys abc -g), zero-delay toggles on uniform random int8 operands; the larger "
                  "energy per toggle of the two calibrations is used everywhere; every gate type alike",
    }

"""The fully parallel dense baseline: every layer of the replaced MLP as constant-weight int8 multiply-add
logic (one multiplier per weight, the weights folded into the logic, no memory, no clock), synthesized
through the same flow as the blocks (xc7 LUTs, generic gates, sky130 area) and driven by the block's real
activations to count toggles - the fairest dense opponent of a LUT block, which also holds its parameters
in logic. Each layer outputs exact integer dot products (checked against numpy on every vector); the
activation and requantization between the layers are not built (they favour the baseline). Only small
MLPs can be synthesized this way (`PARALLEL_MAX_MACS`); full-size ones keep the time-multiplexed array of
baseline.py alone.
"""

from __future__ import annotations

import math

import numpy as np

from .baseline import MlpWeights, int8
from .energy import calibration
from .gatesim import from_bits, load_netlist, simulate, to_bits
from .synth import synthesize_module

#: The largest MLP (multiply-accumulates per token, all layers) built fully parallel.
PARALLEL_MAX_MACS = 4096


def layer_verilog(module: str, w: np.ndarray) -> str:
    """`y_j = sum_i x_i * w[i, j]` for int8 inputs `x_i` and constant int8 weights (zero weights dropped);
    outputs as wide as the largest possible sum."""
    d_in, d_out = w.shape
    width = 16 + max(1, math.ceil(math.log2(d_in)))
    ports = [f"input wire signed [7:0] x_{i}" for i in range(d_in)]
    ports += [f"output wire signed [{width - 1}:0] y_{j}" for j in range(d_out)]
    lines = [f"module {module} ({', '.join(ports)});"]
    for j in range(d_out):
        terms = [f"x_{i} * $signed(8'd{int(w[i, j]) & 0xFF})" for i in range(d_in) if w[i, j]]
        lines.append(f"  assign y_{j} = {' + '.join(terms) or '0'};")
    return "\n".join([*lines, "endmodule", ""])


def parallel_baseline(x: np.ndarray, weights: MlpWeights) -> dict:
    """Cost of the fully parallel int8 MLP on activations `x` `[tokens, D_in]`; `synthesized: False` with the
    reason when it has more than PARALLEL_MAX_MACS multiply-accumulates."""
    macs = sum(w.size for w in (weights.w_up, weights.w_gate, weights.w_down) if w is not None)
    if macs > PARALLEL_MAX_MACS:
        return {"synthesized": False, "macs_per_token": macs,
                "reason": f"{macs} MACs per token: more than {PARALLEL_MAX_MACS} multipliers are not synthesized"}
    layers = [("up", x, weights.w_up)]
    if weights.w_gate is not None:
        layers.append(("gate", x, weights.w_gate))
    layers.append(("down", weights.hidden(x), weights.w_down))
    pj_per_toggle = calibration()["pj_per_toggle"]
    totals = {"lut": 0, "carry4": 0, "dsp": 0, "gates": 0, "sky130_area_um2": 0.0, "toggles_per_token": 0.0}
    exact = True
    for name, inputs, w in layers:
        a, w8 = int8(inputs), int8(w)
        result = synthesize_module(f"quweit_dense_{name}", layer_verilog(f"quweit_dense_{name}", w8))
        netlist = load_netlist(result.netlist / "netlist.json")
        drive = {port: to_bits(a[:, int(port[2:])], 8) for port in netlist.inputs}
        outputs, toggles = simulate(netlist, drive)
        want = a @ w8
        exact &= all(bool((from_bits(bits) == want[:, int(port[2:])]).all()) for port, bits in outputs.items())
        fpga = result.fpga
        for key in ("lut", "carry4", "dsp"):
            totals[key] += fpga[key]
        totals["gates"] += sum(result.gates.values())
        totals["sky130_area_um2"] += result.area_um2
        totals["toggles_per_token"] += sum(toggles.values()) / max(1, len(a) - 1)
    return {"synthesized": True, "macs_per_token": macs, "exact": exact, **totals,
            "pj_per_token": totals["toggles_per_token"] * pj_per_toggle,
            "not_built": "the activation and requantization between the layers"}

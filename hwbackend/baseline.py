"""The dense baseline: the int8 multiply-accumulate datapath of the MLP that each block replaced,
measured through the same flow as the blocks and checked against an analytic model.

A full-size MLP (D_in -> H -> D_out, 2 * D_in * H MACs per token for H = 4 D_in) is a time-multiplexed
array of MAC units (`acc += a * w`, int8 x int8 -> int32) reading its weights from SRAM; one MAC unit is
synthesized to generic gates (yosys), and its gate-level netlist is driven by real operand streams: the
block's real input activations (int8, one scale per tensor) against int8 weights, output-stationary (one
output's dot product in sequence), through both layers (the hidden activation is GELU, re-quantized).
Its toggles per MAC (gates plus the 32 accumulator flip-flops) times the calibrated energy per toggle give
the measured energy per MAC; the analytic model is Horowitz's int8 multiply + int32 add. Every weight is
read once per token from SRAM (64-bit words of eight int8 weights, 10 pJ each, the 8 KB figure: larger
memories cost more, so this favours the baseline). Activations stay in registers (not counted), and the
GELU and requantization steps are not counted either (H per token, against D_in * H MACs).
The weights are not in the converted model: they are drawn N(0, 1/fan_in) with a fixed seed, quantized
like the activations.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .energy import PJ, calibration
from .gatesim import load_netlist, simulate, to_bits
from .synth import synthesize_module

MAC_MODULE = "quweit_mac"
_MAC = """module quweit_mac (input wire signed [7:0] a, input wire signed [7:0] w, input wire signed [31:0] acc,
                   output wire signed [31:0] y);
  assign y = acc + a * w;
endmodule
"""
#: Outputs per layer whose dot products are simulated (the rest follow the same statistics).
SAMPLED_OUTPUTS = 16
TOKENS = 64
SEED = 1234


def _int8(x: np.ndarray) -> np.ndarray:
    scale = 127.0 / max(float(np.abs(x).max()), 1e-12)
    return np.clip(np.rint(x * scale), -127, 127).astype(np.int64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def mac_streams(x: np.ndarray, hidden: int, d_out: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(activations, weights) int8 streams of sampled dot products of both layers, in MAC order."""
    d_in = x.shape[1]
    w1 = rng.standard_normal((d_in, hidden)) / math.sqrt(d_in)
    w2 = rng.standard_normal((hidden, d_out)) / math.sqrt(hidden)
    h = _gelu(x @ w1)
    streams = []
    for inputs, weights in ((x, w1), (h, w2)):
        a, w = _int8(inputs), _int8(weights)
        for j in rng.choice(w.shape[1], size=min(SAMPLED_OUTPUTS, w.shape[1]), replace=False):
            for t in range(len(a)):
                streams.append((a[t], w[:, j]))
    return streams


@functools.lru_cache(maxsize=1)
def _mac_netlist():
    return load_netlist(synthesize_module(MAC_MODULE, _MAC).netlist / "netlist.json")


def measured_mac(x: np.ndarray, hidden: int, d_out: int) -> dict:
    """Toggles per MAC of the synthesized MAC unit on real operand streams from activations `x`."""
    rng = np.random.default_rng(SEED)
    x = np.asarray(x, dtype=np.float64)[:TOKENS]
    a_all, w_all, acc_all = [], [], []
    for a, w in mac_streams(x, hidden, d_out, rng):
        products = a * w
        acc = np.concatenate([[0], np.cumsum(products)[:-1]])  # the accumulator before each MAC
        a_all.append(a)
        w_all.append(w)
        acc_all.append(acc)
    a, w, acc = (np.concatenate(v) for v in (a_all, w_all, acc_all))
    netlist = _mac_netlist()
    outputs, toggles = simulate(netlist, {"a": to_bits(a, 8), "w": to_bits(w, 8), "acc": to_bits(acc, 32)})
    result = outputs["y"]
    exact = bool((result == to_bits(acc + a * w, 32)).all())
    gate = sum(toggles.values()) / (len(a) - 1)
    flops = float(np.count_nonzero(np.diff(to_bits(acc, 32).astype(np.int8), axis=0))) / (len(a) - 1)
    return {"macs_simulated": len(a), "exact": exact, "gate_toggles_per_mac": gate,
            "accumulator_toggles_per_mac": flops, "gates": sum(netlist.gate_types.values())}


def mlp_baseline(x: np.ndarray, d_in: int, hidden: int, d_out: int) -> dict:
    """Energy per token of the dense int8 MLP D_in -> hidden -> D_out: measured and analytic."""
    cal = calibration()
    mac = measured_mac(x, hidden, d_out)
    macs = d_in * hidden + hidden * d_out
    per_mac_measured = (mac["gate_toggles_per_mac"] + mac["accumulator_toggles_per_mac"]) * cal["pj_per_toggle"]
    per_mac_analytic = PJ["int8_mul"] + PJ["int32_add"]
    weight_reads = macs / 8 * PJ["sram_8kb_read_64b"]
    return {
        "shape": [d_in, hidden, d_out], "macs_per_token": macs, "mac_unit": mac,
        "pj_per_mac_measured": per_mac_measured, "pj_per_mac_analytic": per_mac_analytic,
        "weight_read_pj_per_token": weight_reads,
        "pj_per_token": macs * per_mac_measured + weight_reads,
        "pj_per_token_analytic": macs * per_mac_analytic + weight_reads,
        "toggles_per_token": macs * (mac["gate_toggles_per_mac"] + mac["accumulator_toggles_per_mac"]),
    }

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
The weights are not in the converted model: with the original model (`--original`), the baseline uses the
replaced MLP's own weights, biases and activation (`MlpWeights`); without it they are drawn N(0, 1/fan_in)
with a fixed seed and the activation is GELU. Either way they are quantized like the activations.
"""

from __future__ import annotations

import dataclasses
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


def int8(x: np.ndarray) -> np.ndarray:
    scale = 127.0 / max(float(np.abs(x).max()), 1e-12)
    return np.clip(np.rint(x * scale), -127, 127).astype(np.int64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


#: The converter's activation names (converter/rules/activations.py) as numpy functions.
ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x * _sigmoid(x),
    "quick_gelu": lambda x: x * _sigmoid(1.702 * x),
}


@dataclasses.dataclass(frozen=True)
class MlpWeights:
    """The weights of the MLP a block replaced (`[D_in, H]`, `[H, D_out]`, gate `[D_in, H]` or None), from
    the original model (converter.mlp.MlpMatch)."""

    w_up: np.ndarray
    b_up: np.ndarray | None
    w_down: np.ndarray
    activation: str
    w_gate: np.ndarray | None = None
    b_gate: np.ndarray | None = None

    @classmethod
    def from_match(cls, mlp) -> MlpWeights:
        return cls(mlp.w_up, mlp.b_up, mlp.w_down, mlp.activation, mlp.w_gate, mlp.b_gate)

    def hidden(self, x: np.ndarray) -> np.ndarray:
        act = ACTIVATIONS[self.activation]
        up = x @ self.w_up + (0.0 if self.b_up is None else self.b_up)
        if self.w_gate is None:
            return act(up)
        return act(x @ self.w_gate + (0.0 if self.b_gate is None else self.b_gate)) * up


def random_weights(d_in: int, hidden: int, d_out: int, rng) -> MlpWeights:
    """N(0, 1/fan_in) weights, GELU: the baseline when the original model is not given."""
    return MlpWeights(rng.standard_normal((d_in, hidden)) / math.sqrt(d_in), None,
                      rng.standard_normal((hidden, d_out)) / math.sqrt(hidden), "gelu")


def mac_streams(x: np.ndarray, weights: MlpWeights, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(activations, weights) int8 streams of sampled dot products of every layer, in MAC order."""
    h = weights.hidden(x)
    layers = [(x, weights.w_up), (h, weights.w_down)]
    if weights.w_gate is not None:
        layers.insert(1, (x, weights.w_gate))
    streams = []
    for inputs, w in layers:
        a, w = int8(inputs), int8(w)
        for j in rng.choice(w.shape[1], size=min(SAMPLED_OUTPUTS, w.shape[1]), replace=False):
            for t in range(len(a)):
                streams.append((a[t], w[:, j]))
    return streams


@functools.lru_cache(maxsize=1)
def _mac_netlist():
    return load_netlist(synthesize_module(MAC_MODULE, _MAC).netlist / "netlist.json")


def measured_mac(x: np.ndarray, weights: MlpWeights) -> dict:
    """Toggles per MAC of the synthesized MAC unit on real operand streams from activations `x`."""
    rng = np.random.default_rng(SEED)
    x = np.asarray(x, dtype=np.float64)[:TOKENS]
    a_all, w_all, acc_all = [], [], []
    for a, w in mac_streams(x, weights, rng):
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


def baseline_weights(d_in: int, hidden: int, d_out: int, weights: MlpWeights | None) -> tuple[MlpWeights, str]:
    """(weights, where they come from): the original MLP's where given, else random ones of the given shape."""
    if weights is not None:
        return weights, "original model"
    return random_weights(d_in, hidden, d_out, np.random.default_rng(SEED + 1)), f"random N(0, 1/fan_in), seed {SEED + 1}"


def mlp_baseline(x: np.ndarray, weights: MlpWeights, source: str) -> dict:
    """Energy per token of the dense int8 MLP of `weights` on activations `x`: measured and analytic."""
    cal = calibration()
    d_in, hidden, d_out = weights.w_up.shape[0], weights.w_up.shape[1], weights.w_down.shape[1]
    mac = measured_mac(x, weights)
    macs = d_in * hidden * (1 if weights.w_gate is None else 2) + hidden * d_out
    per_mac_measured = (mac["gate_toggles_per_mac"] + mac["accumulator_toggles_per_mac"]) * cal["pj_per_toggle"]
    per_mac_analytic = PJ["int8_mul"] + PJ["int32_add"]
    weight_reads = macs / 8 * PJ["sram_8kb_read_64b"]
    return {
        "shape": [d_in, hidden, d_out], "weights": source, "activation": weights.activation,
        "macs_per_token": macs, "mac_unit": mac,
        "pj_per_mac_measured": per_mac_measured, "pj_per_mac_analytic": per_mac_analytic,
        "weight_read_pj_per_token": weight_reads,
        "pj_per_token": macs * per_mac_measured + weight_reads,
        "pj_per_token_analytic": macs * per_mac_analytic + weight_reads,
        "toggles_per_token": macs * (mac["gate_toggles_per_mac"] + mac["accumulator_toggles_per_mac"]),
    }

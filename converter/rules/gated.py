"""Rule family `gated`: `down(act(gate x) * up x)` (SwiGLU in Llama-style models, GeGLU)."""

from __future__ import annotations

from ._base import MlpRule
from .linear import linear


class GatedMlp(MlpRule):
    family = "gated"
    mixed_biases = False  # the gated MLPs seen have both biases or neither (fewer rules: commuted copies multiply)

    def pattern(self, op, x, w_gate, b_gate, s_gate_in, s_gate_out, w_up, b_up, s_up_in, s_up_out,
                w_down, b_down, s_down_in, s_down_out):
        shared: dict = {}  # gate and up read one quantization of x (int8 kinds)
        g = linear(op, x, w_gate, b_gate, s_gate_in, s_gate_out, kind=self.linear, bias=self.up_bias, tag="gate",
                   quantized=shared)
        u = linear(op, x, w_up, b_up, s_up_in, s_up_out, kind=self.linear, bias=self.up_bias, tag="up",
                   quantized=shared)
        return linear(op, op.Mul(self._act(op, g), u), w_down, b_down, s_down_in, s_down_out,
                      kind=self.linear, bias=self.down_bias, tag="down")

    def _weights(self, b: dict) -> dict[str, tuple]:
        return {
            "gate": (b["gate_out"], b["w_gate"], b.get("b_gate")),
            "up": (b["up_out"], b["w_up"], b.get("b_up")),
            "down": (b["down_out"], b["w_down"], b.get("b_down")),
        }

"""Rule family `linear_act_linear`: `Linear -> act -> Linear` (BERT, GPT-2, ViT, T5, OPT, PyTorch encoders)."""

from __future__ import annotations

from ._base import MlpRule
from .linear import linear


class LinearActLinear(MlpRule):
    family = "linear_act_linear"

    def pattern(self, op, x, w_up, b_up, s_up_in, s_up_out, w_down, b_down, s_down_in, s_down_out):
        h = linear(op, x, w_up, b_up, s_up_in, s_up_out, kind=self.linear, bias=self.up_bias, tag="up")
        a = self._act(op, h)
        return linear(op, a, w_down, b_down, s_down_in, s_down_out, kind=self.linear, bias=self.down_bias, tag="down")

    def _weights(self, b: dict) -> dict[str, tuple]:
        return {"up": (b["up_out"], b["w_up"], b.get("b_up")), "down": (b["down_out"], b["w_down"], b.get("b_down"))}

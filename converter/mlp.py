"""What the detector found: one transformer MLP, its weights and its cost, independent of how it was written."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class MlpHandle:
    """Where an MLP lives in the one in-memory (onnx-ir) model: its nodes in graph order and its input and
    output values, so it can be run alone, cut out and rewritten in place without searching again."""

    nodes: tuple  # tuple[ir.Node, ...]
    x: object  # ir.Value
    y: object  # ir.Value


@dataclasses.dataclass(frozen=True, eq=False)
class MlpMatch:
    """One MLP `y = down(act(up x) [* gate x])` found in a graph.

    `input`/`output` are the graph value names at its ends (the block reads and writes the same values);
    weights are stored as `[D_in, D_out]` float32 whatever the exporter's layout.
    """

    family: str  # rule family: "linear_act_linear" or "gated"
    form: str  # written form of the activation (activations.ACTIVATIONS key)
    activation: str  # activation name for people ("gelu", "relu", ...)
    linear: str  # Linear form (linear.LINEAR_KINDS)
    input: str
    output: str
    nodes: tuple[str, ...]
    w_up: np.ndarray
    b_up: np.ndarray | None
    w_down: np.ndarray
    b_down: np.ndarray | None
    w_gate: np.ndarray | None = None
    b_gate: np.ndarray | None = None
    handle: MlpHandle | None = None  # set by detection on an onnx-ir model

    @property
    def d_in(self) -> int:
        return int(self.w_up.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.w_up.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.w_down.shape[1])

    @property
    def shape(self) -> str:
        gate = " (gated)" if self.w_gate is not None else ""
        return f"{self.d_in}->{self.hidden}->{self.d_out}{gate}"

    @property
    def macs_per_token(self) -> int:
        """Multiply-accumulates of the dense MLP for one token (the activation's few ops not counted)."""
        gate = self.d_in * self.hidden if self.w_gate is not None else 0
        return self.d_in * self.hidden + self.hidden * self.d_out + gate

    @property
    def params(self) -> int:
        arrays = (self.w_up, self.b_up, self.w_down, self.b_down, self.w_gate, self.b_gate)
        return int(sum(a.size for a in arrays if a is not None))

    def summary(self) -> dict[str, object]:
        return {
            "input": self.input, "output": self.output, "nodes": list(self.nodes), "family": self.family,
            "activation": self.activation, "form": self.form, "linear": self.linear, "shape": self.shape,
            "d_in": self.d_in, "hidden": self.hidden, "d_out": self.d_out,
            "macs_per_token": self.macs_per_token, "params": self.params,
        }

"""What every MLP rule shares: reading a match into an `MlpMatch` and the structural checks.

The rules only find: each MLP a rule matches goes to a `Record` callback (with a handle to its nodes and
values) and the match is then declined, so the model is never changed by a rule; a reason why a
candidate is not an MLP goes to the callback's `reject` (for `--explain`). Rewriting happens once per
chosen MLP, through its handle (`converter.detect.replace_with_block`).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from ..mlp import MlpHandle, MlpMatch
from .activations import ACTIVATION_OPS
from .linear import NotALinear, read_linear

Record = Callable[[MlpMatch], None]


class MlpRule(pattern.RewriteRuleClassBase):
    """Base of the MLP rule families: subclasses give `pattern` and `_weights`."""

    family = ""

    def __init__(self, *, linear: str, bias: bool, act_op: tuple[str, str], record: Record) -> None:
        # remove_nodes=False: exporters read shapes of MLP intermediates (Shape -> Reshape); those uses
        # are checked below, and such nodes stay when the MLP is rewritten.
        name = f"{self.family}[{linear}{'+bias' if bias else ''},{act_op[1]}]"
        super().__init__(name=name, remove_nodes=False)
        self.linear, self.bias, self.act_op = linear, bias, act_op
        self._record = record

    # subclasses: {"up": (out_value, w, b), "down": ..., ["gate": ...]}
    def _weights(self, bindings: dict) -> dict[str, tuple]:
        raise NotImplementedError

    def _act(self, op, h):
        """The activation: one node (multi-node forms were fused into one call beforehand)."""
        domain, op_type = self.act_op
        return getattr(op, op_type)(h, _domain=domain, _allow_other_attributes=True, _outputs=["act_out"])

    def check(self, context, x: ir.Value, **bindings) -> MatchResult:
        result = MatchResult()
        found = self._inspect(context, x, bindings)
        if isinstance(found, str):
            reject = getattr(self._record, "reject", None)
            if reject is not None:
                reject(context.root.name or context.root.op_type, found)
            return result.fail(found)
        self._record(found)
        return result.fail("recorded (rules only find; rewriting goes through the MLP's handle)")

    def _inspect(self, context, x: ir.Value, bindings: dict) -> MlpMatch | str:
        """The match as an `MlpMatch`, or the reason it is not a transformer MLP."""
        try:
            arrays = {tag: read_linear(*v, kind=self.linear, tag=tag) for tag, v in self._weights(bindings).items()}
        except NotALinear as err:
            return str(err)
        if x.const_value is not None:
            return f"input '{x.name}' is a constant"
        (w_up, b_up), (w_down, b_down) = arrays["up"], arrays["down"]
        w_gate, b_gate = arrays.get("gate", (None, None))
        if w_down.shape[0] != w_up.shape[1] or (w_gate is not None and w_gate.shape != w_up.shape):
            return f"weight shapes do not chain: up {list(w_up.shape)}, down {list(w_down.shape)}"
        if w_down.shape[1] != w_up.shape[0]:
            return f"output width {w_down.shape[1]} != input width {w_up.shape[0]}: not a residual transformer MLP"
        if x.shape is not None and len(x.shape) >= 1 and isinstance(x.shape[-1], int) and x.shape[-1] != w_up.shape[0]:
            return f"input '{x.name}' last axis {x.shape[-1]} != weight rows {w_up.shape[0]}"
        activation = ACTIVATION_OPS[self.act_op]
        act_node = bindings["act_out"].producer()
        if self.act_op == ("", "Gelu") and act_node.attributes.get_string("approximate", "none") == "tanh":
            activation = "gelu_tanh"
        output = context.output_values[0]
        reason = _external_use(context.nodes, output)
        if reason:
            return reason
        nodes = tuple(_in_graph_order(context))
        return MlpMatch(
            family=self.family, form=f"{self.act_op[0] or 'ai.onnx'}::{self.act_op[1]}", activation=activation,
            linear=self.linear, input=x.name, output=output.name, nodes=tuple(n.name or "" for n in nodes),
            w_up=w_up, b_up=b_up, w_down=w_down, b_down=b_down, w_gate=w_gate, b_gate=b_gate,
            handle=MlpHandle(nodes, x, output),
        )

    def rewrite(self, op, x: ir.Value, **_):
        raise AssertionError("unreachable: check() declines every match")


def _in_graph_order(context) -> list[ir.Node]:
    matched = set(context.nodes)
    return [n for n in context.graph_or_function if n in matched]


def _external_use(nodes, output: ir.Value) -> str | None:
    """A reason if an MLP intermediate is read outside the match (other than by Shape), else None."""
    matched = set(nodes)
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return f"intermediate '{value.name}' is a graph output"
            for use in value.uses():
                if use.node not in matched and use.node.op_type != "Shape":
                    return f"intermediate '{value.name}' is also read by {use.node.op_type} '{use.node.name}'"
    return None

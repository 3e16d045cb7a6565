"""What every MLP rule shares: reading a match into an `MlpMatch`, the structural checks, and the rewrite.

A rule asks a `Decide` callback what to do with each MLP it matches: the callback returns the block's
parameters (rewrite) or a reason (leave it, the reason goes to `--explain`). Detection alone is a
callback that records and declines, so detection and rewrite can never disagree on what matched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult
from quweit.custom_ops import DOMAIN, OP_TYPE, WeightlessBlockParams

from ..mlp import MlpHandle, MlpMatch
from .activations import ACTIVATION_OPS
from .linear import NotALinear, read_linear

Decide = Callable[[MlpMatch], WeightlessBlockParams | str]


class MlpRule(pattern.RewriteRuleClassBase):
    """Base of the MLP rule families: subclasses give `pattern` and `_weights`."""

    family = ""

    def __init__(self, *, linear: str, bias: bool, act_op: tuple[str, str], decide: Decide) -> None:
        # remove_nodes=False: exporters read shapes of MLP intermediates (Shape -> Reshape); those uses
        # are checked below and the dead nodes are dropped after rewriting.
        name = f"{self.family}[{linear}{'+bias' if bias else ''},{act_op[1]}]"
        super().__init__(name=name, remove_nodes=False)
        self.linear, self.bias, self.act_op = linear, bias, act_op
        self._decide = decide
        self._pending: tuple[MlpMatch, WeightlessBlockParams] | None = None

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
            reject = getattr(self._decide, "reject", None)
            if reject is not None:
                reject(context.root.name or context.root.op_type, found)
            return result.fail(found)
        verdict = self._decide(found)
        if isinstance(verdict, str):
            return result.fail(verdict)
        self._pending = (found, verdict)
        return result

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
        mlp, params = self._pending
        self._pending = None
        names = params.initializer_names(f"{mlp.output}.quweit.")
        inits = [op.initializer(ir.tensor(np.ascontiguousarray(a), name=n), name=n)
                 for n, a in zip(names, params.arrays().values())]
        return op.op(OP_TYPE, x, *inits, _domain=DOMAIN, **params.attributes())


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

"""What every MLP rule shares: reading a match into an `MlpMatch` and the structural checks.

The rules only find: each MLP a rule matches goes to a `Record` callback (with a handle to its nodes and
values) and the match is then declined, so the model is never changed by a rule; a reason why a
candidate is not an MLP goes to the callback's `reject` (for `--explain`). Rewriting happens once per
chosen MLP, through its handle (`converter.detect.replace_with_block`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from ..mlp import MlpHandle, MlpMatch
from .activations import ACT_DOMAIN, ACTIVATION_OPS
from .linear import NotALinear, constant, read_linear
from .ort_fused import WITH_BIAS, fused_bias, quick_gelu_name
from .quantized import LINEAR_DOMAIN, NotDequantizable, dequantized_constant
from .see_through import View

Record = Callable[[MlpMatch], None]
FUSION_DOMAINS = (ACT_DOMAIN, LINEAR_DOMAIN)


class MlpRule(pattern.RewriteRuleClassBase):
    """Base of the MLP rule families: subclasses give `pattern` and `_weights`."""

    family = ""
    mixed_biases = True  # variants with a bias on only one side (onnxruntime moves biases into fused ops)

    def __init__(self, *, linear: str, up_bias: bool, down_bias: bool, act_op: tuple[str, str], record: Record,
                 view: View | None = None) -> None:
        # remove_nodes=False: exporters read shapes of MLP intermediates (Shape -> Reshape); those uses
        # are checked below, and such nodes stay when the MLP is rewritten.
        biases = f"{'+b' if up_bias else ''}/{'+b' if down_bias else ''}"
        super().__init__(name=f"{self.family}[{linear}{biases},{act_op[0] + '::' if act_op[0] else ''}{act_op[1]}]",
                         remove_nodes=False)
        self.linear, self.up_bias, self.down_bias, self.act_op = linear, up_bias, down_bias, act_op
        self._record = record
        self._view = view  # the nodes looked through while matching (see_through)

    # subclasses: {"up": (out_value, w, b), "down": ..., ["gate": ...]}
    def _weights(self, bindings: dict) -> dict[str, tuple]:
        raise NotImplementedError

    def _act(self, op, h):
        """The activation: one node (multi-node forms were fused into one call beforehand); onnxruntime's
        fused ones may carry the preceding bias as a second input."""
        domain, op_type = self.act_op
        return getattr(op, op_type)(h, _domain=domain, _allow_other_attributes=True, _outputs=["act_out"],
                                    _allow_other_inputs=self.act_op in WITH_BIAS)

    def check(self, context, x: ir.Value, **bindings) -> MatchResult:
        result = MatchResult()
        nodes = _in_graph_order(context)
        found = self._inspect(context, x, bindings, nodes)
        if isinstance(found, str):
            reject = getattr(self._record, "reject", None)
            if reject is not None:
                reject(context.root.name or context.root.op_type, found, [n.name for n in nodes])
            return result.fail(found)
        self._record(found)
        return result.fail("recorded (rules only find; rewriting goes through the MLP's handle)")

    def _inspect(self, context, x: ir.Value, bindings: dict, nodes: list[ir.Node]) -> MlpMatch | str:
        """The match (`nodes`: the matched nodes as `_in_graph_order` gives them) as an `MlpMatch`, or the
        reason it is not a transformer MLP."""
        try:
            arrays = {tag: read_linear(*v, kind=self.linear, tag=tag) for tag, v in self._weights(bindings).items()}
        except NotALinear as err:
            return str(err)
        reason = self._view.training_dropout_reason(nodes) if self._view is not None else None
        if reason:
            return reason
        if x.const_value is not None:
            return f"input '{x.name}' is a constant"
        act_node = bindings["act_out"].producer()
        bias_value = fused_bias(act_node)
        if bias_value is not None:  # onnxruntime moved the bias of the Linear before the activation into it
            fed = "gate" if "gate" in arrays else "up"
            try:
                extra = constant(bias_value, f"{act_node.op_type} '{act_node.name}' bias").astype(np.float32)
            except NotALinear as err:
                return str(err)
            w, b = arrays[fed]
            if extra.size not in (1, w.shape[1]):
                return f"{act_node.op_type} '{act_node.name}' bias has {extra.size} values, the Linear {w.shape[1]} outputs"
            arrays[fed] = (w, np.broadcast_to(extra.reshape(-1), (w.shape[1],)) + (0 if b is None else b))
        (w_up, b_up), (w_down, b_down) = arrays["up"], arrays["down"]
        w_gate, b_gate = arrays.get("gate", (None, None))
        if w_down.shape[0] != w_up.shape[1] or (w_gate is not None and w_gate.shape != w_up.shape):
            return f"weight shapes do not chain: up {list(w_up.shape)}, down {list(w_down.shape)}"
        if w_down.shape[1] != w_up.shape[0]:
            return f"output width {w_down.shape[1]} != input width {w_up.shape[0]}: not a residual transformer MLP"
        if x.shape is not None and len(x.shape) >= 1 and isinstance(x.shape[-1], int) and x.shape[-1] != w_up.shape[0]:
            return f"input '{x.name}' last axis {x.shape[-1]} != weight rows {w_up.shape[0]}"
        activation = ACTIVATION_OPS[self.act_op]
        if self.act_op == ("", "Gelu") and act_node.attributes.get_string("approximate", "none") == "tanh":
            activation = "gelu_tanh"
        if self.act_op == ("com.microsoft", "QuickGelu"):
            activation = quick_gelu_name(act_node)
        output = context.output_values[0]
        reason = _external_use(context.nodes, output, x) or (None if self.down_bias else _bias_follows(output))
        if reason:
            return reason
        return MlpMatch(
            family=self.family, form=f"{self.act_op[0] or 'ai.onnx'}::{self.act_op[1]}", activation=activation,
            linear=self.linear, input=x.name, output=output.name,
            nodes=tuple(n.name or "" for n in nodes),
            w_up=w_up, b_up=b_up, w_down=w_down, b_down=b_down, w_gate=w_gate, b_gate=b_gate,
            handle=MlpHandle(tuple(n for n in context.graph_or_function if n in set(context.nodes)), x, output),
        )

    def rewrite(self, op, x: ir.Value, **_):
        raise AssertionError("unreachable: check() declines every match")


def _bias_follows(output: ir.Value) -> str | None:
    """A reason if the MLP's output goes only to an Add of a constant: the down Linear's bias (the variant
    with a down bias matches the whole MLP)."""
    uses = list(output.uses())
    if len(uses) == 1 and uses[0].node.op_type == "Add" and uses[0].node.domain in ("", "ai.onnx"):
        other = uses[0].node.inputs[1 - uses[0].idx]
        if other is not None and (other.const_value is not None or _dequantized(other)):
            return f"output '{output.name}' goes to a bias Add '{uses[0].node.name}' (part of the MLP)"
    return None


def _dequantized(value: ir.Value) -> bool:
    try:
        return dequantized_constant(value) is not None
    except NotDequantizable:
        return True


def _in_graph_order(context) -> list[ir.Node]:
    """The matched nodes in graph order, each fused call replaced by the exporter's nodes it stands for."""
    matched = set(context.nodes)
    nodes: list[ir.Node] = []
    for node in context.graph_or_function:
        if node not in matched:
            continue
        body = context.model.functions.get(node.op_identifier()) if node.domain in FUSION_DOMAINS else None
        nodes.extend([n for n in body if n.name] if body is not None else [node])
    return nodes


def _external_use(nodes, output: ir.Value, x: ir.Value) -> str | None:
    """A reason if an MLP intermediate is read outside the match (other than by Shape), else None.

    The input's `DynamicQuantizeLinear` may have other readers (other Linears of the same input): it stays
    for them, and no part of the MLP's work stays with it.
    """
    matched = set(nodes)
    for node in nodes:
        if node.op_type == "DynamicQuantizeLinear" and node.inputs[0] is x:
            continue
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return f"intermediate '{value.name}' is a graph output"
            for use in value.uses():
                if use.node not in matched and use.node.op_type != "Shape":
                    return f"intermediate '{value.name}' is also read by {use.node.op_type} '{use.node.name}'"
    return None

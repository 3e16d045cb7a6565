"""Find the MLPs of a model and rewrite chosen ones into `WeightlessBlock` nodes, on one onnx-ir model.

`prepare` puts the model into the form the rules expect (opset >= 18, `onnxscript.optimizer` folds the
dynamo exporter's weight Transposes and constant scalars, nodes named, activations written in several
nodes fused into one call each). `detect` runs the rule set once; its callback records every MLP with a
handle (its nodes and values in that model) and declines, so nothing changes. `replace_with_block` then
rewrites one MLP in place through its handle, as soon as its block is known; `finish` inlines the
activation calls that stayed and attaches the op's decomposition. No step copies or re-serialises the
model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import NameFixPass, RemoveUnusedOpsetsPass
from onnxscript.rewriter import pattern
from quweit.custom_ops import DOMAIN, OP_TYPE, WeightlessBlockParams, attach_decomposition
from quweit.onnxio import upgrade_opset

from .mlp import MlpMatch
from .rules import activation_fusions, inline_activations, mlp_rules


def as_ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model as onnx-ir: an onnx-ir model itself (worked on in place), or a proto's copy (the caller's
    proto stays untouched; the IR may share storage with the proto it reads)."""
    if isinstance(model, ir.Model):
        return model
    model = upgrade_opset(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return ir.serde.deserialize_model(copy)


def prepare(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model the converter works on: `normalise`d, then `fuse`d. An onnx-ir model is prepared in place."""
    return fuse(normalise(model))


def normalise(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """Opset >= 18, optimized (constants folded), nodes named: the model as the converter counts it."""
    model = as_ir(model)
    onnxscript.optimizer.optimize(model)
    NameFixPass()(model)
    return model


def fuse(model: ir.Model) -> ir.Model:
    """Each multi-node activation as one call of a model-local function, as the MLP rules expect it."""
    by_root(activation_fusions()).apply_to_model(model)
    return model


def by_root(rules: pattern.RewriteRuleSet) -> pattern.RewriteRuleSet:
    """The same rules, each trying a node only when its op type is that of the rule's root node.

    The rewriter tries every rule at every node, and its matcher costs about as much to say no as to say
    yes; a large model has thousands of nodes and the MLP rules come in many commuted variants, so this
    dictionary-cheap test first makes detection about a third faster. Rules whose root is not one fixed
    op are left as they are.
    """
    for rule in rules.rules:
        roots = rule._target_pattern.output_nodes  # onnxscript keeps the root patterns here
        identifier = roots[0].op_identifier() if len(roots) == 1 else None
        if identifier is None:
            continue
        original = rule.try_rewrite

        def try_rewrite(model, graph, node, *args, _op=identifier[1], _original=original, **kwargs):
            return _original(model, graph, node, *args, **kwargs) if node.op_type == _op else None

        rule.try_rewrite = try_rewrite
    return rules


@dataclasses.dataclass
class Detection:
    """MLPs found (graph order) and, for `--explain`, the candidates that were turned down and why."""

    mlps: list[MlpMatch]
    rejected: list[tuple[str, str]]  # (where, reason)


class _Recorder:
    """The rules' callback: remember each MLP once (several commuted rule variants may see the same one),
    and why other candidates are not MLPs."""

    def __init__(self) -> None:
        self.found: dict[str, MlpMatch] = {}
        self.rejected: dict[str, str] = {}

    def reject(self, where: str, reason: str) -> None:
        self.rejected.setdefault(where, reason)

    def __call__(self, mlp: MlpMatch) -> None:
        self.found.setdefault(mlp.output, mlp)


def detect(model: ir.Model) -> Detection:
    """Every MLP of a prepared model, in graph order, with handles into it, plus why other Linear layers
    are not MLPs. The model is not changed."""
    recorder = _Recorder()
    by_root(mlp_rules(recorder)).apply_to_model(model)
    order = {node: i for i, node in enumerate(model.graph)}
    mlps = sorted(recorder.found.values(), key=lambda m: min(order.get(n, 1 << 30) for n in m.handle.nodes))
    in_mlp = {n for m in mlps for n in m.nodes}
    rejected = [(w, r) for w, r in recorder.rejected.items() if w not in in_mlp]
    return Detection(mlps, rejected + _unmatched_linears(model, mlps, {w for w, _ in rejected}))


def find_mlps(model: onnx.ModelProto | ir.Model) -> Detection:
    """`detect` on a prepared copy: for callers that only want to know what is there."""
    return detect(prepare(model.clone() if isinstance(model, ir.Model) else model))


def replace_with_block(model: ir.Model, mlp: MlpMatch, params: WeightlessBlockParams) -> ir.Node:
    """Rewrite one detected MLP in place: a block reads the MLP's input value and writes its output value
    (same name), so the rest of the graph, its inputs/outputs and symbolic dimensions are untouched. MLP
    nodes that nothing else reads go; ones whose values other nodes read (exporters take `Shape`s of MLP
    intermediates) stay."""
    graph = model.graph
    handle = mlp.handle
    inits = []
    for name, array in zip(params.initializer_names(f"{mlp.output}.quweit."), params.arrays().values()):
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        graph.register_initializer(value)
        inits.append(value)
    node = ir.Node(DOMAIN, OP_TYPE, [handle.x, *inits], ir.convenience.convert_attributes(params.attributes()),
                   num_outputs=1, name=f"{mlp.output}/WeightlessBlock")
    removable = set(handle.nodes)
    changed = True
    while changed:  # keep every MLP node whose values are read outside what goes
        changed = False
        for old in list(removable):
            for value in old.outputs:
                if value is handle.y:
                    continue
                if value.is_graph_output() or any(use.node not in removable for use in value.uses()):
                    removable.discard(old)
                    changed = True
                    break
    ir.convenience.replace_nodes_and_values(
        graph, handle.nodes[-1], [n for n in handle.nodes if n in removable], [node], [handle.y], node.outputs)
    return node


def finish(model: ir.Model) -> ir.Model:
    """The model to save: activation calls that no block replaced inlined back into the exporter's nodes,
    unused nodes and opsets dropped, and the op's decomposition attached when blocks are present."""
    inline_activations(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    RemoveUnusedOpsetsPass()(model)
    if any(node.domain == DOMAIN for node in model.graph):
        attach_decomposition(model)
    return model


def rewrite_mlps(model: onnx.ModelProto | ir.Model, params: dict[str, WeightlessBlockParams]
                 ) -> tuple[onnx.ModelProto | ir.Model, int]:
    """Replace the MLPs whose output name is a key of `params` by their blocks (prepare, detect, rewrite,
    finish); returns (model of the kind given, count). A proto is not changed; an onnx-ir model is."""
    prepared = prepare(model)
    count = 0
    for mlp in detect(prepared).mlps:
        if mlp.output in params:
            replace_with_block(prepared, mlp, params[mlp.output])
            count += 1
    finish(prepared)
    return (prepared if isinstance(model, ir.Model) else ir.serde.serialize_model(prepared)), count


def _unmatched_linears(model: ir.Model, mlps: list[MlpMatch], explained: set[str]) -> list[tuple[str, str]]:
    """MatMul/Gemm nodes with a constant weight that belong to no MLP, with the node that follows them."""
    in_mlp = {n for m in mlps for n in m.handle.nodes}
    reasons = []
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain != "" or node in in_mlp or node.name in explained:
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is None or weight.const_value is None:
            continue  # activation x activation products (attention scores) are not Linear layers
        dims = list(weight.const_value.shape)
        after = [f"{use.node.op_type} '{use.node.name}'" for use in node.outputs[0].uses()] or ["graph output"]
        reasons.append((node.name, "Linear " + str(dims) + " is not part of Linear -> activation -> Linear "
                        f"(its output goes to {', '.join(after)})"))
    return reasons


__all__ = ["Detection", "as_ir", "by_root", "detect", "find_mlps", "finish", "fuse", "normalise", "prepare",
           "replace_with_block", "rewrite_mlps"]

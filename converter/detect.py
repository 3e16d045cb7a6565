"""Find the MLPs of a model and rewrite chosen ones into `WeightlessBlock` nodes, on one onnx-ir model.

`normalise` puts the model into the form the rules expect (opset >= 18, `onnxscript.optimizer` folds the
dynamo exporter's weight Transposes and constant scalars, no-op Reshapes go, nodes named). `detect` runs
the rules once: with fake quantization and training-mode Dropout looked through (`see_through`) and the
multi-node activations and int8 Linears fused into one call each, every rule's callback records each
MLP and declines, so no rule changes the model; the fused calls are then inlined back and the units
looked through put back, and each MLP gets a handle (its nodes and values in that model).
`replace_with_block` rewrites one MLP in place through its handle, as soon as its block is known;
`finish` drops what no node reads and attaches the op's decomposition. No step copies or re-serialises
the model.
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

from .bypass import Replacement, as_replacement
from .costs import linear_weight
from .errors import BadInputError
from .mlp import MlpHandle, MlpMatch
from .rules import FUSION_DOMAINS, fusions, inline_fusions, looking_through, mlp_rules, present_ops
from .rules.see_through import TRAINING_DROPOUT_FIX, identity_rules


def as_ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model as onnx-ir: an onnx-ir model itself (worked on in place), or a proto's copy (the caller's
    proto stays untouched; the IR may share storage with the proto it reads)."""
    if isinstance(model, ir.Model):
        return model
    model = upgrade_opset(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return ir.serde.deserialize_model(copy)


def prepare(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    """`normalise`d, in the kind given: a proto's normalised copy as a proto, an onnx-ir model in place."""
    if isinstance(model, ir.Model):
        return normalise(model)
    return ir.serde.serialize_model(normalise(model))


def normalise(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """Opset >= 18, optimized (constants folded, no-op Reshapes gone), nodes named: the model as the
    converter counts and matches it. A model onnxscript's optimizer cannot take is bad input."""
    model = as_ir(model)
    reads = _initializer_reads(model.graph)
    try:
        onnxscript.optimizer.optimize(model)
        if identity_rules().apply_to_model(model):  # shapes are known once the optimizer has run
            onnxscript.optimizer.optimize(model)
    except Exception as err:
        raise _invalid_model_or(err, model) from err
    NameFixPass()(model)
    keep_initializers_apart(model.graph, reads)
    return model


def _initializer_reads(graph: ir.Graph) -> list[tuple[ir.Node, int, ir.Value]]:
    return [(node, slot, value) for node in graph for slot, value in enumerate(node.inputs)
            if value is not None and value.is_initializer()]


def keep_initializers_apart(graph: ir.Graph, reads: list[tuple[ir.Node, int, ir.Value]]) -> None:
    """Every node reads its own initializer again where it did before the optimizer ran (`reads`).

    onnxscript's optimizer merges small initializers of equal contents (DeduplicateInitializersPass, not
    optional in `optimize`). That is harmless for inference but ties weights that are merely equal - the
    LayerNorm gains and zero biases of a model exported before training - so `quweit-finetune
    --train-dense` would train them as one. A node that read initializer X and now reads another one
    holding X's exact value reads X again; initializers that the model itself shared stay shared.
    """
    for node, slot, was in reads:
        now = node.inputs[slot] if node.graph is graph and slot < len(node.inputs) else None
        if now is None or now is was or not now.is_initializer() or was.const_value is None:
            continue
        if graph.initializers.get(was.name) is not was:
            if was.name in graph.initializers or not _same_tensor(was.const_value, now.const_value):
                continue
            graph.register_initializer(was)
        node.replace_input_with(slot, was)


def _same_tensor(a, b) -> bool:
    if b is None or a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return a.numpy().tobytes() == b.numpy().tobytes()


def _invalid_model_or(err: Exception, model: ir.Model) -> BadInputError:
    """Why onnxscript's optimizer could not take the user's model (nothing of quweit's has run yet): the
    model's fault as onnx's full check (strict type and shape inference, which the loader leaves out
    for its cost) names it, else the optimizer's own deepest reason - an attribute outside its
    enumeration, such as a Cast to a data type that does not exist, which neither checker catches."""
    try:
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    except Exception as invalid:  # noqa: BLE001  (any failure of the full check is the model's)
        return BadInputError(f"invalid ONNX model: {_first_line(invalid)}")
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return BadInputError(f"onnxscript's optimizer cannot process the model: {type(cause).__name__}: "
                         f"{_first_line(cause)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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

    def no_mlp_message(self) -> str:
        """What to tell a user whose model has no MLP: the training-mode Dropout in the way, if one is."""
        for where, reason in self.rejected:
            if TRAINING_DROPOUT_FIX in reason:
                return f"no MLP found in the model: at '{where}': {reason}"
        return "no MLP found in the model (--explain says why candidates did not match)"


class _Recorder:
    """The rules' callback: remember each MLP once (several commuted rule variants may see the same one),
    and why other candidates are not MLPs."""

    def __init__(self) -> None:
        self.found: dict[str, MlpMatch] = {}
        self.rejected: dict[str, str] = {}
        self.explained: set[str] = set()  # nodes of rejected candidates: their reason covers them

    def reject(self, where: str, reason: str, nodes: list[str]) -> None:
        self.rejected.setdefault(where, reason)
        self.explained.update(nodes)

    def __call__(self, mlp: MlpMatch) -> None:
        self.found.setdefault(mlp.output, mlp)


def detect(model: ir.Model) -> Detection:
    """Every MLP of a normalised model, in graph order, with handles into it, plus why other Linear layers
    are not MLPs. The model computes what it computed before (fused calls are inlined back, units looked
    through are put back)."""
    recorder = _Recorder()
    with looking_through(model) as view:
        for fusion in fusions(present_ops(model)):
            by_root(fusion).apply_to_model(model)
        rules = mlp_rules(recorder, present_ops(model), view)
        if rules is not None:
            by_root(rules).apply_to_model(model)
        calls = {m.output: [_call(n) if n.domain in FUSION_DOMAINS else n for n in m.handle.nodes]
                 for m in recorder.found.values()}
        inline_fusions(model)
        values = {v.name: v for node in model.graph for v in node.outputs}
        members = {output: _inlined(parts, values) for output, parts in calls.items()}
    order = {node: i for i, node in enumerate(model.graph)}
    values = {v.name: v for v in model.graph.inputs} | {v.name: v for node in order for v in node.outputs}
    mlps = sorted((_bind(m, members[m.output], values.get(m.input), order) for m in recorder.found.values()),
                  key=lambda m: order[m.handle.nodes[0]])
    in_mlp = {n for m in mlps for n in m.nodes}
    rejected = [(w, r) for w, r in recorder.rejected.items() if w not in in_mlp]
    explained = {w for w, _ in rejected} | (recorder.explained - in_mlp)
    return Detection(mlps, rejected + _unmatched_linears(model, in_mlp, explained))


def _call(node: ir.Node) -> tuple[set[str], list[str]]:
    """A fused call as what survives its inlining: the names of the values it reads and of its outputs
    (inlined values take the names of those they replace)."""
    return {v.name for v in node.inputs if v is not None}, [v.name for v in node.outputs]


def _inlined(parts: list, values: dict[str, ir.Value]) -> set[ir.Node]:
    """An MLP's nodes once its fused calls are inlined: each call's nodes are those between its outputs
    and its inputs. Taken while the units looked through are still out, so a dequantized scalar (one may
    serve several MLPs) is not among them."""
    nodes = {p for p in parts if isinstance(p, ir.Node)}
    for reads, names in (p for p in parts if not isinstance(p, ir.Node)):
        stack = [values[name] for name in names if name in values]
        while stack:
            producer = stack.pop().producer()
            if producer is None or producer in nodes:
                continue
            nodes.add(producer)
            stack += [v for v in producer.inputs if v is not None and v.name not in reads and not v.is_initializer()]
    return nodes


def _bind(mlp: MlpMatch, nodes: set[ir.Node], x: ir.Value | None, order: dict) -> MlpMatch:
    """The MLP with its handle into the model as it is after detection: its nodes (fused calls inlined
    back) and what was looked through between them once put back (QDQ pairs, also on the input)."""
    nodes = {n for n in nodes if n in order}
    if x is None:
        raise RuntimeError(f"internal error: the input of MLP '{mlp.output}' is gone after detection")
    grown = True
    while grown:
        grown = False
        for value in [v for node in nodes for v in node.inputs if v is not None and v is not x]:
            producer = value.producer()
            if producer is not None and producer not in nodes:
                between = _between(producer, nodes, x)
                if between:
                    nodes |= between
                    grown = True
    y = next((v for node in nodes for v in node.outputs if v.name == mlp.output), None)
    if y is None:
        raise RuntimeError(f"internal error: the output of MLP '{mlp.output}' is gone after detection")
    return dataclasses.replace(mlp, handle=MlpHandle(tuple(sorted(nodes, key=order.__getitem__)), x, y))


def _between(start: ir.Node, nodes: set[ir.Node], x: ir.Value, limit: int = 16) -> set[ir.Node]:
    """`start` and the nodes it depends on, when all of them read only the MLP's nodes, its input and
    constants, and some read the MLP's nodes or input (a dequantized scalar may serve several MLPs and
    stays out); else nothing."""
    found: set[ir.Node] = set()
    stack, inside = [start], False
    while stack:
        node = stack.pop()
        if node in found:
            continue
        found.add(node)
        if len(found) > limit:
            return set()
        for value in node.inputs:
            if value is None or value.is_initializer():
                continue
            producer = value.producer()
            if value is x or producer in nodes:
                inside = True
            elif producer is None:
                return set()  # a graph input
            else:
                stack.append(producer)
    return found if inside else set()


def find_mlps(model: onnx.ModelProto | ir.Model) -> Detection:
    """`detect` on a normalised copy: for callers that only want to know what is there."""
    return detect(normalise(model.clone() if isinstance(model, ir.Model) else model))


def replace_with_block(model: ir.Model, mlp: MlpMatch, params: WeightlessBlockParams | Replacement) -> ir.Node:
    """Rewrite one detected MLP in place: a block reads the MLP's input value and writes its output value
    (same name), so the rest of the graph, its inputs/outputs and symbolic dimensions are untouched. A
    `Replacement` with a low-rank bypass adds `MatMul(MatMul(x, down), up) + bias` to the block's output.
    Parameters are named `<MLP output>.quweit.*`. MLP nodes that nothing else reads go (a quantized chain
    as a whole); ones whose values other nodes read stay (exporters take `Shape`s of MLP intermediates,
    other Linears of the same input read its `DynamicQuantizeLinear`). Returns the block node."""
    graph = model.graph
    handle = mlp.handle
    replacement = as_replacement(params)
    prefix = f"{mlp.output}.quweit."

    def initializer(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        graph.register_initializer(value)
        return value

    block_params = replacement.block
    inits = [initializer(n, a) for n, a in zip(block_params.initializer_names(prefix), block_params.arrays().values())]
    block = ir.Node(DOMAIN, OP_TYPE, [handle.x, *inits], ir.convenience.convert_attributes(block_params.attributes()),
                    num_outputs=1, name=f"{mlp.output}/WeightlessBlock")
    new_nodes = [block]
    if replacement.bypass is not None:
        down, up, bias = (initializer(prefix + n, a) for n, a in replacement.bypass.arrays().items())
        low = ir.Node("", "MatMul", [handle.x, down], name=f"{mlp.output}/bypass_down")
        high = ir.Node("", "MatMul", [low.outputs[0], up], name=f"{mlp.output}/bypass_up")
        shifted = ir.Node("", "Add", [high.outputs[0], bias], name=f"{mlp.output}/bypass_bias")
        total = ir.Node("", "Add", [block.outputs[0], shifted.outputs[0]], name=f"{mlp.output}/bypass_add")
        new_nodes += [low, high, shifted, total]
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
        graph, handle.nodes[-1], [n for n in handle.nodes if n in removable], new_nodes, [handle.y],
        new_nodes[-1].outputs)
    return block


def finish(model: ir.Model) -> ir.Model:
    """The model to save: unused nodes and opsets dropped, and the op's decomposition attached when blocks
    are present."""
    onnxscript.optimizer.remove_unused_nodes(model)
    RemoveUnusedOpsetsPass()(model)
    if any(node.domain == DOMAIN for node in model.graph):
        attach_decomposition(model)
    return model


def rewrite_mlps(model: onnx.ModelProto | ir.Model, params: dict[str, WeightlessBlockParams | Replacement]
                 ) -> tuple[onnx.ModelProto | ir.Model, int]:
    """Replace the MLPs whose output name is a key of `params` by their blocks (normalise, detect,
    rewrite, finish) on a copy; returns (model of the kind given, count). The model given is not changed."""
    prepared = normalise(model.clone() if isinstance(model, ir.Model) else model)
    count = 0
    for mlp in detect(prepared).mlps:
        if mlp.output in params:
            replace_with_block(prepared, mlp, params[mlp.output])
            count += 1
    finish(prepared)
    return (prepared if isinstance(model, ir.Model) else ir.serde.serialize_model(prepared)), count


def _unmatched_linears(model: ir.Model, in_mlp: set[str], explained: set[str]) -> list[tuple[str, str]]:
    """Linear layers (a constant weight, float or quantized) that belong to no MLP, with the node after them."""
    reasons = []
    for node in model.graph:
        if node.name in in_mlp or node.name in explained:
            continue
        weight = linear_weight(node)
        if weight is None:
            continue  # activation x activation products (attention scores) are not Linear layers
        after = [f"{use.node.op_type} '{use.node.name}'" for use in node.outputs[0].uses()] or ["graph output"]
        reason = (f"Linear {list(weight.shape)} is not part of Linear -> activation -> Linear "
                  f"(its output goes to {', '.join(after)})")
        reasons.append((node.name, reason))
    return reasons


__all__ = ["Detection", "as_ir", "by_root", "detect", "find_mlps", "finish", "keep_initializers_apart", "normalise",
           "prepare", "replace_with_block", "rewrite_mlps"]

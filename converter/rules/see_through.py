"""Nodes the MLP rules look through: fake quantization (QDQ pairs) and training-mode Dropout.

Static QDQ quantization (`onnxruntime.quantization.quantize_static`) puts a `QuantizeLinear ->
DequantizeLinear` pair on almost every activation edge, inside the GELU decomposition as well, and
stores scalar constants (the GELU's 0.5 and 1) as `DequantizeLinear` of an int8 constant; a
training-mode export puts `Dropout(training_mode=True)` between an MLP's stages. Neither is an identity,
so `onnxscript.optimizer` rightly keeps them; onnxscript (0.7) has no rule for QDQ, and its rewriter has
no "optional node on this edge" (an `OrValue` per edge would multiply every pattern, and commuted copies
of Or-patterns are not made). So this module is hand-written: `looking_through(model)` takes these units
out of the main graph while the rules run (their readers read the unit's input, or the float value of a
dequantized scalar) and afterwards puts back every unit that a node outside the rewritten MLPs still
reads, so the rest of the model keeps its quantization exactly. A unit whose readers were all rewritten
is swallowed by the block: the block replaces the whole quantize -> matmul -> dequantize chain. A
swallowed training-mode Dropout is a reason to refuse the MLP.

Readers are remembered by node name and op type: the activation fusions move nodes into model-local
functions and inlining brings back copies with the same names.

The identity-like nodes - `Identity`, inference-mode `Dropout`, `Cast` to the same type, `Reshape` to a
shape it can prove equal - are removed for good by `onnxscript.optimizer.optimize` in `detect.prepare`;
`NoOpReshape` adds the one it misses: a constant target shape that copies (0) or repeats every dimension.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass
from onnxscript.rewriter import pattern

from .quantized import dequantize

FAKE_QUANT = "fake_quant"
DEQUANTIZED_SCALAR = "dequantized_scalar"
TRAINING_DROPOUT = "training_dropout"
TRAINING_DROPOUT_FIX = "export the model in eval mode (call model.eval() before torch.onnx.export)"


@dataclasses.dataclass
class Unit:
    """A chain of nodes that reads one value; the rules see its readers read that value directly."""

    nodes: list[ir.Node]
    kind: str  # FAKE_QUANT, DEQUANTIZED_SCALAR or TRAINING_DROPOUT
    readers: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # (node name, op type, input)

    @property
    def output(self) -> ir.Value:
        return self.nodes[-1].outputs[0]

    def describe(self) -> str:
        return " -> ".join(f"{n.op_type} '{n.name}'" for n in self.nodes)


class View:
    """The units taken out of a graph, and which of them a set of nodes read."""

    def __init__(self, units: list[Unit]) -> None:
        self._by_reader: dict[str, list[Unit]] = {}
        for unit in units:
            for name, _, _ in unit.readers:
                self._by_reader.setdefault(name, []).append(unit)

    def read_by(self, nodes: Iterable[ir.Node]) -> list[Unit]:
        found: list[Unit] = []
        for node in nodes:
            for unit in self._by_reader.get(node.name or "", []):
                if unit not in found:
                    found.append(unit)
        return found

    def training_dropout_reason(self, nodes: Iterable[ir.Node]) -> str | None:
        dropouts = [u for u in self.read_by(nodes) if u.kind == TRAINING_DROPOUT]
        if not dropouts:
            return None
        names = ", ".join(u.describe() for u in dropouts)
        return f"{names} in training mode (training_mode=True) inside this MLP: {TRAINING_DROPOUT_FIX}"


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _same_input(a: ir.Value | None, b: ir.Value | None) -> bool:
    if a is b:
        return True
    va, vb = _constant(a), _constant(b)
    return va is not None and vb is not None and va.shape == vb.shape and np.array_equal(va, vb)


def _fake_quant(dq: ir.Node) -> Unit | None:
    """`DequantizeLinear(QuantizeLinear(v, s, z), s, z)`: same scale, zero point, axis and block size."""
    q = dq.inputs[0].producer() if dq.inputs and dq.inputs[0] is not None else None
    if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or q.inputs[0] is None:
        return None
    if len(dq.inputs[0].uses()) != 1:
        return None  # the quantized value is read elsewhere (a QLinear op): not a plain round trip
    for i in (1, 2):
        if not _same_input(q.inputs[i] if len(q.inputs) > i else None, dq.inputs[i] if len(dq.inputs) > i else None):
            return None
    for name, default in (("axis", 1), ("block_size", 0)):
        if q.attributes.get_int(name, default) != dq.attributes.get_int(name, default):
            return None
    return Unit([q, dq], FAKE_QUANT)


def _dequantized_scalar(dq: ir.Node) -> Unit | None:
    """`DequantizeLinear` of a constant scalar: the rules see the float constant (pattern scalars match it)."""
    given = [v for v in dq.inputs if v is not None]
    if not given or any(v.const_value is None for v in given) or given[0].const_value.size != 1:
        return None
    return Unit([dq], DEQUANTIZED_SCALAR)


def _training_dropout(node: ir.Node) -> Unit | None:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return None  # the mask is read: not a pass-through
    training = _constant(node.inputs[2]) if len(node.inputs) > 2 else None
    if training is None or not bool(training.reshape(-1)[0]):
        return None  # inference mode (the optimizer removes those) or unknown
    ratio = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if ratio is not None and float(ratio.reshape(-1)[0]) == 0.0:
        return None
    return Unit([node], TRAINING_DROPOUT)


def find_units(graph: ir.Graph) -> list[Unit]:
    units = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        unit = ((_fake_quant(node) or _dequantized_scalar(node)) if node.op_type == "DequantizeLinear" else
                _training_dropout(node) if node.op_type == "Dropout" else None)
        if unit is None or unit.output.is_graph_output():
            continue
        if all(use.node.graph is graph for use in unit.output.uses()):  # readers in subgraphs: left alone
            units.append(unit)
    return units


def _take_out(graph: ir.Graph, unit: Unit) -> None:
    uses = list(unit.output.uses())
    unit.readers = [(use.node.name or "", use.node.op_type, use.idx) for use in uses]
    if unit.kind == DEQUANTIZED_SCALAR:  # readers read a float initializer meanwhile
        q, scale, zero = (_constant(v) if v is not None else None for v in (list(unit.nodes[0].inputs) + [None])[:3])
        source = ir.Value(name=f"{unit.output.name}.quweit_float", const_value=ir.tensor(dequantize(q, scale, zero)))
        graph.register_initializer(source)
    else:
        source = unit.nodes[0].inputs[0]
        unit.nodes[0].replace_input_with(0, None)
    for use in uses:
        use.node.replace_input_with(use.idx, source)
    # unsafe removal keeps the unit's other inputs (scales, zero points) in use, so none is dropped meanwhile
    graph.remove(unit.nodes, safe=False)


def _clone(nodes: list[ir.Node]) -> list[ir.Node]:
    """A copy of a unit (for a second group of readers that read a different value now)."""
    copies: list[ir.Node] = []
    mapping: dict[ir.Value, ir.Value] = {}
    for node in nodes:
        copy = ir.Node(node.domain, node.op_type, [mapping.get(v, v) for v in node.inputs],
                       list(node.attributes.values()), num_outputs=len(node.outputs))
        mapping.update(zip(node.outputs, copy.outputs))
        copies.append(copy)
    return copies


def _put_back(graph: ir.Graph, unit: Unit, nodes_by_name: dict[str, ir.Node]) -> None:
    readers = [(nodes_by_name[name], index) for name, op_type, index in unit.readers
               if name in nodes_by_name and nodes_by_name[name].op_type == op_type]
    if unit.kind == DEQUANTIZED_SCALAR:  # the constant's readers (or their inlined copies) read it again
        for node, index in readers:
            node.replace_input_with(index, unit.output)
        if readers:
            graph.insert_before(readers[0][0], unit.nodes)
        else:
            for i in range(len(unit.nodes[0].inputs)):
                unit.nodes[0].replace_input_with(i, None)
        return
    groups: dict[ir.Value, list[tuple[ir.Node, int]]] = {}
    for node, index in readers:  # readers read the unit's input, or the value that replaced it
        groups.setdefault(node.inputs[index], []).append((node, index))
    if not groups:  # every reader was rewritten into a block: the unit is swallowed
        for node in unit.nodes:
            for i in range(len(node.inputs)):
                node.replace_input_with(i, None)
        return
    for k, (source, group) in enumerate(groups.items()):
        nodes = unit.nodes if k == 0 else _clone(unit.nodes)
        nodes[0].replace_input_with(0, source)
        for node, index in group:
            node.replace_input_with(index, nodes[-1].outputs[0])
        graph.insert_before(group[0][0], nodes)  # anywhere: the graph is sorted once all are back
        nodes_by_name.update((node.name, node) for node in nodes if node.name)


@contextlib.contextmanager
def looking_through(model: ir.Model) -> Iterator[View]:
    """Take the see-through units out of the main graph for the duration; put back those still read."""
    graph = model.graph
    units = find_units(graph)
    for unit in units:
        _take_out(graph, unit)
    try:
        yield View(units)
    finally:
        if units:
            nodes_by_name = {node.name: node for node in graph if node.name}
            for unit in reversed(units):  # a unit that reads another's output is put back first
                _put_back(graph, unit, nodes_by_name)
            for name in [n for n, v in graph.initializers.items() if n.endswith(".quweit_float") and not v.uses()]:
                del graph.initializers[name]
            graph.sort()  # stable: only the units put back move
            NameFixPass()(model)  # values created meanwhile may have taken the name of one that was out


class NoOpReshape(pattern.RewriteRuleClassBase):
    """`Reshape(x, c)` with a constant `c` that keeps every dimension of `x`: 0 (copy, without allowzero),
    the same static size, or one -1 among dimensions that all match. onnxscript's optimizer compares the
    target shape literally and keeps it."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True)

    def check(self, context, x: ir.Value, shape: ir.Value):
        result = pattern.MatchResult()
        target = _constant(shape)
        node = context.root
        if target is None or x.shape is None or target.ndim != 1 or len(target) != len(x.shape):
            return result.fail("target shape is not a constant of the input's rank")
        allowzero = node.attributes.get_int("allowzero", 0)
        kept = [(t == 0 and not allowzero) or (isinstance(d, int) and t == d) for t, d in zip(target.tolist(), x.shape)]
        unknown = [i for i, ok in enumerate(kept) if not ok]
        if len(unknown) > 1 or (unknown and target[unknown[0]] != -1):
            return result.fail(f"Reshape '{node.name}' changes the shape {x.shape} to {target.tolist()}")
        return result

    def rewrite(self, op, x, shape):
        return op.Identity(x)


def identity_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([NoOpReshape.rule()])

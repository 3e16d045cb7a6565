"""Find the MLPs of a model and rewrite chosen ones into `WeightlessBlock` nodes (onnxscript rewriter).

The model is first put into the form the rules expect (`prepare`: opset >= 18, `onnxscript.optimizer`
folds the dynamo exporter's weight Transposes and constant scalars). Detection and rewriting run the
same rule set; detection's callback records and declines, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import NameFixPass, RemoveUnusedOpsetsPass
from quweit.custom_ops import WeightlessBlockParams, attach_decomposition
from quweit.onnxio import upgrade_opset

from .bypass import Replacement
from .errors import BadInputError
from .costs import linear_weight
from .mlp import MlpMatch
from .rules import fusions, inline_fusions, looking_through, mlp_rules, present_ops
from .rules.see_through import TRAINING_DROPOUT_FIX, identity_rules


def _to_ir(model: onnx.ModelProto) -> ir.Model:
    """An IR copy: the IR may share storage with the proto it reads, and callers' models stay untouched."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return ir.serde.deserialize_model(copy)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model the converter works on: opset >= 18, optimized (constants folded), nodes named."""
    model = upgrade_opset(model)
    try:
        ir_model = _to_ir(model)
        onnxscript.optimizer.optimize(ir_model)
        if identity_rules().apply_to_model(ir_model):  # shapes are known once the optimizer has run
            onnxscript.optimizer.optimize(ir_model)
    except Exception as err:
        raise _invalid_model_or(err, model) from err
    NameFixPass()(ir_model)
    return keep_initializers_apart(model, ir.serde.serialize_model(ir_model))


def keep_initializers_apart(original: onnx.ModelProto, optimized: onnx.ModelProto) -> onnx.ModelProto:
    """`optimized` with every node reading its own initializer again where `original` kept them apart.

    onnxscript's optimizer merges small initializers of equal contents (DeduplicateInitializersPass). That
    is harmless for inference but ties weights that are merely equal - the LayerNorm gains and zero biases
    of a model exported before training - so `quweit-finetune --train-dense` would train them as one.
    A node (known by its first output) that read initializer X in `original` and now reads another one
    holding X's exact value reads X again. Initializers that `original` itself shares stay shared.
    """
    before = {t.name: t for t in original.graph.initializer}
    read = {(node.output[0], slot): name for node in original.graph.node if node.output
            for slot, name in enumerate(node.input) if name in before}
    after = {t.name for t in optimized.graph.initializer}
    values = {t.name: t for t in optimized.graph.initializer}
    restored: set[str] = set()
    for node in optimized.graph.node:
        for slot, name in enumerate(node.input):
            was = read.get((node.output[0], slot)) if node.output else None
            if was is None or was == name or name not in after or (was in after and was not in restored):
                continue
            if was not in restored:
                if not _same_tensor(before[was], values[name]):
                    continue
                optimized.graph.initializer.append(before[was])
                restored.add(was)
            node.input[slot] = was
    return optimized


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    x, y = onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _invalid_model_or(err: Exception, model: onnx.ModelProto) -> BadInputError:
    """Why onnxscript's optimizer could not take the user's model (nothing of quweit's has run yet): the
    model's fault as onnx's full check (strict type and shape inference, which the loader leaves out
    for its cost) names it, else the optimizer's own deepest reason - an attribute outside its
    enumeration, such as a Cast to a data type that does not exist, which neither checker catches."""
    try:
        onnx.checker.check_model(model, full_check=True)
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
    """Decide callback: remember each MLP once (several commuted rule variants may see the same one)."""

    def __init__(self, params_for=None) -> None:
        self.params_for = params_for
        self.found: dict[str, MlpMatch] = {}
        self.verdicts: dict[str, WeightlessBlockParams | str] = {}
        self.rejected: dict[str, str] = {}
        self.explained: set[str] = set()  # nodes of rejected candidates: their reason covers them

    def reject(self, where: str, reason: str, nodes: list[str]) -> None:
        self.rejected.setdefault(where, reason)
        self.explained.update(nodes)

    def __call__(self, mlp: MlpMatch):
        self.found.setdefault(mlp.output, mlp)
        if mlp.output not in self.verdicts:
            self.verdicts[mlp.output] = "detection only" if self.params_for is None else self.params_for(mlp)
        return self.verdicts[mlp.output]


def _apply(model: onnx.ModelProto, recorder: _Recorder) -> tuple[ir.Model, int]:
    ir_model = _to_ir(model)
    count = 0
    with looking_through(ir_model) as view:
        for fusion in fusions(present_ops(ir_model)):
            fusion.apply_to_model(ir_model)
        rules = mlp_rules(recorder, present_ops(ir_model), view)
        if rules is not None:
            count = rules.apply_to_model(ir_model)
        inline_fusions(ir_model)
    return ir_model, count


def find_mlps(model: onnx.ModelProto) -> Detection:
    """Every MLP of a prepared model, in graph order, plus why other Linear layers are not MLPs."""
    recorder = _Recorder()
    _apply(model, recorder)
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    mlps = sorted(recorder.found.values(), key=lambda m: min(order.get(n, 1 << 30) for n in m.nodes))
    in_mlp = {n for m in mlps for n in m.nodes}
    rejected = [(w, r) for w, r in recorder.rejected.items() if w not in in_mlp]
    explained = {w for w, _ in rejected} | (recorder.explained - in_mlp)
    return Detection(mlps, rejected + _unmatched_linears(model, mlps, explained))


def rewrite_mlps(model: onnx.ModelProto, params: dict[str, WeightlessBlockParams | Replacement]
                 ) -> tuple[onnx.ModelProto, int]:
    """Replace the MLPs whose output name is a key of `params` by their blocks; returns (model, count).

    Each replacement reads the MLP's input value and writes its output value (same names), so the rest of
    the graph, its inputs/outputs and symbolic dimensions are untouched; a `Replacement` with a bypass adds
    its MatMuls' output to the block's. The result carries the block's ONNX-function decomposition, so
    stock onnxruntime runs it.
    """
    recorder = _Recorder(lambda mlp: params.get(mlp.output, "not selected"))
    ir_model, count = _apply(model, recorder)
    onnxscript.optimizer.remove_unused_nodes(ir_model)
    RemoveUnusedOpsetsPass()(ir_model)
    _name_blocks(ir_model, recorder)
    out = ir.serde.serialize_model(ir_model)
    return (attach_decomposition(out) if count else out), count


def _name_blocks(ir_model: ir.Model, recorder: _Recorder) -> None:
    """Name each block `<MLP output>/WeightlessBlock` (its parameters are named `<MLP output>.quweit.*`)."""
    for node in ir_model.graph:
        if node.domain != "quweit" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        owner = node.inputs[1].name.rpartition(".quweit.")[0]
        if owner in recorder.found:
            node.name = f"{owner}/WeightlessBlock"


def _unmatched_linears(model: onnx.ModelProto, mlps: list[MlpMatch], explained: set[str]) -> list[tuple[str, str]]:
    """Linear layers (a constant weight, float or quantized) that belong to no MLP, with the node after them."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    in_mlp = {n for m in mlps for n in m.nodes}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reasons = []
    for node in model.graph.node:
        if node.name in in_mlp or node.name in explained:
            continue
        weight = linear_weight(node, inits, producers)
        if weight is None:
            continue  # activation x activation products (attention scores) are not Linear layers
        after = [f"{c.op_type} '{c.name}'" for c in consumers.get(node.output[0], [])] or ["graph output"]
        reason = (f"Linear {list(weight.dims)} is not part of Linear -> activation -> Linear "
                  f"(its output goes to {', '.join(after)})")
        reasons.append((node.name, reason))
    return reasons

"""Putting `WeightlessBlock` nodes into ONNX models: the decomposition attached, the domain imported."""

from __future__ import annotations

from typing import Sequence

import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from .decomposition import MIN_OPSET, make_function
from .errors import WeightlessBlockError
from .params import DOMAIN, OP_TYPE, OP_VERSION, WeightlessBlockParams
from .schema import register_schema


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ValueError("model imports no default ONNX domain")


def attach_decomposition(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto | ir.Model:
    """Make `model` (a proto, or an onnx-ir model) self-contained: import domain `quweit` v1 and (re)attach
    the function body.

    Idempotent. The function is built for the model's own default opset, which must be >= 18.
    """
    register_schema()
    if isinstance(model, ir.Model):
        opset = model.opset_imports.get("", 0)
        if opset < MIN_OPSET:
            raise ValueError(f"model opset {opset} is below {MIN_OPSET}; upgrade it first")
        function = ir.serde.deserialize_function(make_function(opset))
        model.functions[function.identifier()] = function
        model.opset_imports[DOMAIN] = OP_VERSION
        return model
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(
            f"model opset {opset} is below {MIN_OPSET}; upgrade it first (onnx.version_converter)"
        )
    if not any(e.domain == DOMAIN for e in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept + [make_function(opset)])
    return model


def make_block_node(
    params: WeightlessBlockParams, x_name: str, y_name: str, *, prefix: str, name: str | None = None
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """One `WeightlessBlock` node reading `x_name`, with its parameters as named initializers."""
    attrs, inits = params.to_onnx(prefix)
    node = helper.make_node(
        OP_TYPE,
        [x_name, *params.initializer_names(prefix)],
        [y_name],
        name=name or f"{prefix}node",
        domain=DOMAIN,
        **attrs,
    )
    return node, inits


def make_block_model(
    params: WeightlessBlockParams,
    leading_shape: Sequence[int | str] = ("batch", "sequence"),
    *,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """A model holding one block: `X [*leading_shape, D_in] -> Y [*leading_shape, D_out]`."""
    node, inits = make_block_node(params, "X", "Y", prefix="block.", name="block")
    graph = helper.make_graph(
        [node],
        "weightless_block",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [*leading_shape, params.in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*leading_shape, params.out_features])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return attach_decomposition(model)


def block_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The `WeightlessBlock` nodes of the main graph."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def read_blocks(model: onnx.ModelProto) -> list[WeightlessBlockParams]:
    """Validated parameters of every block in `model` (errors name the node).

    The model must import domain `quweit` at version 1: another version may mean other semantics
    (spec section 7), so it is refused rather than read as version 1."""
    nodes = block_nodes(model)
    if nodes:
        versions = [e.version for e in model.opset_import if e.domain == DOMAIN]
        if versions != [OP_VERSION]:
            found = f"version {versions[0]}" if len(versions) == 1 else f"versions {versions}" if versions else "no version"
            raise WeightlessBlockError("opset_import", f"the model imports domain '{DOMAIN}' at {found}; this "
                                       f"quweit implements {OP_TYPE} version {OP_VERSION} only", node=nodes[0].name)
    inits = {t.name: t for t in model.graph.initializer}
    return [WeightlessBlockParams.from_onnx(node, inits) for node in nodes]

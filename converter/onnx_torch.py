"""A converted ONNX model as a differentiable torch module, and its block parameters written back.

`OnnxGraphModule` runs the main graph node by node with the torch ops of `onnx_ops`; every
`quweit::WeightlessBlock` node becomes a trainable `custom_ops.torch_block.WeightlessBlock` submodule
(its parameter initializers are read into the module, not kept as tensors). All other initializers are
frozen buffers, except the low-rank bypasses beside blocks (`converter.bypass`, trained with the blocks
unless `train_bypass=False`) and, with `train_dense=True`, every floating-point one (fine-tuning the
rest of the network around the blocks, as the QuWeiT paper trains), lookup tables (embeddings) included
unless `train_lookups=False`. `write_back` puts the trained values
into a copy of the ONNX model, replacing exactly those initializers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from quweit.custom_ops.params import DOMAIN, OP_TYPE, WeightlessBlockParams
from quweit.custom_ops.torch_block import WeightlessBlock
from torch import nn

from .bypass import BYPASS_MARK
from .onnx_ops import OPS, tensor_from_proto


class UnsupportedOnnxError(ValueError):
    """The graph holds something this ONNX -> torch runner cannot execute (named in the message)."""


def _is_block(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def _module_key(name: str, taken: set[str]) -> str:
    key = re.sub(r"\W", "_", name) or "block"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


class OnnxGraphModule(nn.Module):
    """Executes `model.graph` in torch; `forward(**inputs)` returns the graph outputs (a tuple if several)."""

    def __init__(self, model: onnx.ModelProto, *, train_dense: bool = False, train_bypass: bool = True,
                 train_lookups: bool = True, taps: Sequence[str] = (), **block_options) -> None:
        super().__init__()
        graph = model.graph
        self.input_names = [i.name for i in graph.input]
        self.output_names = [o.name for o in graph.output]
        self.taps = list(taps)  # values of nodes each forward keeps in `tapped` (hidden-state distillation;
        # finetune checks the names)
        self.tapped: dict[str, torch.Tensor] = {}
        initializers = {t.name: t for t in graph.initializer}
        block_inputs: set[str] = set()
        self.blocks = nn.ModuleDict()
        self.block_nodes: dict[str, str] = {}  # module key -> node name
        taken: set[str] = set()
        self._plan: list[tuple[onnx.NodeProto, str | None, dict]] = []
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            if _is_block(node):
                params = WeightlessBlockParams.from_onnx(node, initializers, node_name=name)
                key = _module_key(name, taken)
                self.blocks[key] = WeightlessBlock.from_params(params, **block_options)
                self.block_nodes[key] = name
                block_inputs.update(node.input[1:])
                self._plan.append((node, key, {}))
                continue
            if (node.domain, node.op_type) not in OPS:
                raise UnsupportedOnnxError(
                    f"node '{name}': op {node.domain or 'ai.onnx'}::{node.op_type} has no torch implementation")
            for attr in node.attribute:
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    raise UnsupportedOnnxError(f"node '{name}': subgraphs ({node.op_type}) are not supported")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            self._plan.append((node, None, attrs))
        frozen = set() if train_lookups else lookup_tables(graph)
        self._constants: dict[str, str] = {}
        self.dense = nn.ParameterDict()
        self.dense_names: dict[str, str] = {}  # parameter key -> initializer name
        self.bypass_keys: list[str] = []  # keys of `dense` that belong to low-rank bypasses (converter.bypass)
        for index, (name, proto) in enumerate(initializers.items()):
            if name in block_inputs:
                continue
            key = f"initializer_{index}"
            value = tensor_from_proto(proto)
            bypass = BYPASS_MARK in name
            dense = train_dense and name not in frozen
            if (dense or train_bypass and bypass) and value.is_floating_point() and value.ndim >= 1:
                self.dense[key] = nn.Parameter(value)
                self.dense_names[key] = name
                if bypass:
                    self.bypass_keys.append(key)
            else:
                self.register_buffer(key, value, persistent=False)
            self._constants[name] = key

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        values: dict[str, torch.Tensor | None] = {"": None}
        for name, value in zip(self.input_names, args):
            values[name] = value
        values.update(kwargs)
        missing = [n for n in self.input_names if n not in values and n not in self._constants]
        if missing:
            raise ValueError(f"missing graph inputs {missing}; expected {self.input_names}")
        for name, key in self._constants.items():
            values.setdefault(name, self.dense[key] if key in self.dense_names else getattr(self, key))
        for node, block_key, attrs in self._plan:
            if block_key is not None:
                outputs = (self.blocks[block_key](values[node.input[0]]),)
            else:
                try:
                    result = OPS[(node.domain, node.op_type)]([values[i] for i in node.input], attrs)
                except Exception as err:  # name the node: the op's own message says what went wrong
                    raise RuntimeError(f"node '{node.name}' ({node.op_type}): {err}") from err
                outputs = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.output, outputs):
                values[name] = value
        self.tapped = {n: values[n] for n in self.taps}
        results = tuple(values[n] for n in self.output_names)
        return results if len(results) > 1 else results[0]

    def block_params(self) -> dict[str, WeightlessBlockParams]:
        """Current parameters of every block, keyed by ONNX node name."""
        return {node: self.blocks[key].to_params(node=node) for key, node in self.block_nodes.items()}

    def dense_arrays(self) -> dict[str, np.ndarray]:
        """Current values of the trainable non-block initializers (bypasses; all with `train_dense`), by name."""
        return {name: self.dense[key].detach().numpy().copy() for key, name in self.dense_names.items()}


def lookup_tables(graph: onnx.GraphProto) -> set[str]:
    """Initializers that are only ever the table a `Gather` looks rows up in (token and position embeddings).

    A batch reads a few hundred of MiniLM's 30,522 word-embedding rows, yet a dense optimizer step updates
    all of them: half of a distillation step's time, for weights that no block's error lives in. Keeping them
    frozen is the distillation recipe's choice; training from scratch must train them."""
    tables: set[str] = set()
    other: set[str] = set()
    for node in graph.node:
        for slot, name in enumerate(node.input):
            (tables if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and slot == 0 else other).add(name)
    initializers = {t.name for t in graph.initializer}
    return (tables - other) & initializers


def write_back(model: onnx.ModelProto, params_by_node: dict[str, WeightlessBlockParams],
               initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose blocks hold `params_by_node` and whose named `initializers` hold new values
    (same dtype and shape); nothing else changes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    position = {t.name: k for k, t in enumerate(out.graph.initializer)}
    for name, value in (initializers or {}).items():
        if name not in position:
            raise ValueError(f"no initializer named '{name}' in the model")
        old = out.graph.initializer[position[name]]
        old_array = numpy_helper.to_array(old)
        if old_array.shape != value.shape or old_array.dtype != value.dtype:
            raise ValueError(f"initializer '{name}': new value {value.dtype}{list(value.shape)} does not match "
                             f"{old_array.dtype}{list(old_array.shape)}")
        old.CopyFrom(numpy_helper.from_array(value, name))
    readers: dict[str, int] = {}
    for node in out.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = set()
    for index, node in enumerate(out.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if not _is_block(node) or name not in params_by_node:
            continue
        found.add(name)
        params = params_by_node[name]
        attrs, inits = params.to_onnx(prefix="")
        for input_name, tensor in zip(node.input[1:], inits):
            if readers.get(input_name, 0) != 1:
                raise ValueError(f"node '{name}': initializer '{input_name}' is shared with other nodes; "
                                 "refusing to change it")
            tensor.name = input_name
            out.graph.initializer[position[input_name]].CopyFrom(tensor)
        for attr in node.attribute:
            if attr.name in attrs and helper.get_attribute_value(attr) != attrs[attr.name]:
                raise ValueError(f"node '{name}': attribute {attr.name} would change; structure must not change")
    missing = set(params_by_node) - found
    if missing:
        raise ValueError(f"no WeightlessBlock nodes named {sorted(missing)} in the model")
    return out

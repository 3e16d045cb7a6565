"""The prepared model cut at its MLPs, and passes of calibration data through it, MLP by MLP.

The graph is split once into steps: a segment (the nodes that compute what MLP k needs from what is
already known), MLP k itself, the next segment, ..., and a tail that computes the graph outputs. Each
step is one onnxruntime session of that part of the one in-memory model (built on first use, then
reused by every pass). A `Stream` carries runs of inputs through the steps and keeps per run only the
values that later steps still read (the residual stream, masks, ...). At an MLP a stream either runs
the dense MLP or a fitted block, so the same sessions give the original model, the model with blocks
0..k-1 in place (sequential fitting) and any mixture, without serialising or rebuilding the model. A
stream forks cheaply (the sensitivity of MLP k continues a copy of the original stream from MLP k).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from quweit.custom_ops import make_block_model
from quweit.onnxio import Run, make_session, token_rows

from .mlp import MlpMatch


@dataclasses.dataclass
class Step:
    """One part of the graph: `kind` "segment" or "mlp" (index `mlp`), the values it reads and the
    values it produces that later steps (or the graph outputs) read."""

    kind: str
    mlp: int | None
    nodes: list[ir.Node]
    inputs: list[str]
    outputs: list[str]
    session: ort.InferenceSession | None = None


class Stages:
    """The steps of one prepared model and their sessions (see module doc)."""

    def __init__(self, model: ir.Model, mlps: Sequence[MlpMatch], *, kernel: bool | None = None) -> None:
        self.model, self.mlps, self.kernel = model, list(mlps), kernel
        self.steps = self._plan()
        self.outputs = [v.name for v in model.graph.outputs]
        self._mlp_step = {s.mlp: i for i, s in enumerate(self.steps) if s.kind == "mlp"}
        self._block_sessions: dict[int, ort.InferenceSession] = {}
        # values each step leaves for later: read by a later step or a graph output
        needed = set(self.outputs)
        self._live_after: list[set[str]] = [set()] * len(self.steps)
        for i in range(len(self.steps) - 1, -1, -1):
            self._live_after[i] = set(needed)
            needed |= set(self.steps[i].inputs)
        self.graph_inputs = [v.name for v in model.graph.inputs if not v.is_initializer()]

    def _plan(self) -> list[Step]:
        graph = self.model.graph
        order = {node: i for i, node in enumerate(graph)}
        mlp_nodes = {node: k for k, m in enumerate(self.mlps) for node in m.handle.nodes}
        known: set[ir.Value] = {v for v in graph.inputs}
        done: set[ir.Node] = set()
        steps: list[Step] = []

        def closure(targets: list[ir.Value], before: int) -> list[ir.Node]:
            """Nodes not yet computed that `targets` need, stopping at known values and constants."""
            found: set[ir.Node] = set()
            stack = [v for v in targets if v not in known]
            while stack:
                value = stack.pop()
                node = value.producer()
                if node is None or node in done or node in found:
                    continue
                if mlp_nodes.get(node, -1) >= before:  # the graph order of MLPs is topological
                    raise RuntimeError(f"internal error: value '{value.name}' needed before MLP {before} comes "
                                       f"from MLP {mlp_nodes[node]}")
                found.add(node)
                for value in _reads(node):
                    if value not in known and not value.is_initializer():
                        stack.append(value)
            return sorted(found, key=order.__getitem__)

        def add(kind: str, k: int | None, nodes: list[ir.Node], extra_outputs: Sequence[ir.Value] = ()) -> None:
            inside = set(nodes)
            inputs = {v: None for n in nodes for v in _reads(n) if not v.is_initializer() and v.producer() not in inside}
            missing = [v.name for v in inputs if v not in known]
            if missing:
                raise RuntimeError(f"internal error: step before MLP {k} reads unknown values {missing}")
            produced = [v for n in nodes for v in n.outputs if v.name]
            steps.append(Step(kind, k, nodes, [v.name for v in inputs], [v.name for v in produced]))
            known.update(produced)
            done.update(nodes)

        for k, mlp in enumerate(self.mlps):
            members = set(mlp.handle.nodes)
            needs = [v for n in mlp.handle.nodes for v in _reads(n) if not v.is_initializer() and v.producer() not in members]
            segment = closure(needs, k)
            if segment:
                add("segment", None, segment)
            add("mlp", k, list(mlp.handle.nodes))
        tail = closure(list(graph.outputs), len(self.mlps))
        if tail:
            add("segment", None, tail)
        for step in steps:  # keep only what a later step or the outputs read (liveness is applied per stream)
            step.outputs = list(dict.fromkeys(step.outputs))
        return steps

    # --- sessions -----------------------------------------------------------------------------------

    def session(self, index: int, example: dict[str, np.ndarray]) -> ort.InferenceSession:
        """The session of step `index` (built from the in-memory model on first use)."""
        step = self.steps[index]
        if step.session is None:
            live = self._live_after[index]
            wanted = [n for n in step.outputs if n in live]
            if step.kind == "mlp":  # the MLP's output first: its consumers read it even when nothing else does
                y = self.mlps[step.mlp].output
                wanted = [y] + [n for n in wanted if n != y]
            step.outputs = wanted
            sub = ir.convenience.extract(self.model.graph, step.inputs, wanted)
            for value in sub.inputs:
                array = example[value.name]
                if value.dtype is None:
                    value.dtype = ir.DataType.from_numpy(array.dtype)
                if value.shape is None or len(value.shape) != array.ndim:
                    value.shape = ir.Shape([None] * array.ndim)
            model = ir.Model(sub, ir_version=self.model.ir_version, functions=list(self.model.functions.values()))
            step.session = make_session(model, kernel=self.kernel, spinning=False)
        return step.session

    def block_session(self, k: int, params, rank: int) -> ort.InferenceSession:
        """A session of MLP k's block alone (the kernel when built, else the decomposition)."""
        key = (k, id(params))
        if key not in self._block_sessions:
            leading = tuple(f"d{i}" for i in range(rank - 1))
            session = make_session(make_block_model(params, leading), kernel=self.kernel, spinning=False)
            self._block_sessions[key] = (params, session)
        return self._block_sessions[key][1]

    def release(self, upto_mlp: int) -> None:
        """Drop the sessions of the steps up to MLP `upto_mlp` (no later pass needs them)."""
        for index in range(self._mlp_step[upto_mlp] + 1):
            self.steps[index].session = None
        for key in [key for key in self._block_sessions if key[0] <= upto_mlp]:
            del self._block_sessions[key]


def _reads(node: ir.Node) -> list[ir.Value]:
    """The values a node reads, its subgraphs' reads from outer scopes included."""
    values = [v for v in node.inputs if v is not None]
    for attr in node.attributes.values():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            graphs = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else list(attr.as_graphs())
            for graph in graphs:
                inner = {v for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.outputs} | set(graph.inputs)
                values += [v for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.inputs
                           if v is not None and v not in inner and not v.is_initializer()]
    return values


class Stream:
    """Runs of inputs on their way through the steps; at each MLP the dense MLP or a block."""

    def __init__(self, stages: Stages, runs: Sequence[Run]) -> None:
        self.stages = stages
        self.runs = list(runs)
        self.states: list[dict[str, np.ndarray]] = [dict(run.feeds) for run in self.runs]
        self.position = 0  # index of the next step

    def fork(self) -> Stream:
        copy = Stream.__new__(Stream)
        copy.stages, copy.runs, copy.position = self.stages, self.runs, self.position
        copy.states = [dict(state) for state in self.states]
        return copy

    def _run(self, index: int, session: ort.InferenceSession, inputs: list[str], outputs: list[str]) -> None:
        live = self.stages._live_after[index]
        for state in self.states:
            values = session.run(outputs, {n: state[n] for n in inputs})
            state.update(zip(outputs, values))
            for name in [n for n in state if n not in live]:
                del state[name]

    def advance(self, k: int) -> None:
        """Run the segments before MLP k (the stream stands at MLP k's step afterwards)."""
        target = self.stages._mlp_step[k]
        while self.position < target:
            self._segment()

    def _segment(self) -> None:
        index = self.position
        step = self.stages.steps[index]
        if step.kind != "segment":
            raise RuntimeError(f"internal error: step {index} is MLP {step.mlp}; apply it first")
        session = self.stages.session(index, self.states[0])
        self._run(index, session, step.inputs, step.outputs)
        self.position += 1

    def rows(self, name: str) -> np.ndarray:
        """The value `name` over all runs, as float32 rows of real tokens."""
        return np.concatenate([token_rows(state[name], run) for state, run in zip(self.states, self.runs)])

    def dense_rows(self, k: int) -> np.ndarray:
        """MLP k's dense output on the stream's current input, as rows (the stream does not move)."""
        index = self.stages._mlp_step[k]
        step = self.stages.steps[index]
        session = self.stages.session(index, self.states[0])
        y = self.stages.mlps[k].output
        return np.concatenate([token_rows(session.run([y], {n: state[n] for n in step.inputs})[0], run)
                               for state, run in zip(self.states, self.runs)])

    def apply(self, k: int, params=None) -> None:
        """MLP k's step: the dense MLP (`params` None) or its block in its place."""
        self.advance(k)
        index = self.position
        step = self.stages.steps[index]
        session = self.stages.session(index, self.states[0])
        if params is None:
            self._run(index, session, step.inputs, step.outputs)
        else:
            mlp = self.stages.mlps[k]
            block = self.stages.block_session(k, params, self.states[0][mlp.input].ndim)
            outputs = [block.run(None, {"X": state[mlp.input]})[0] for state in self.states]
            others = step.outputs[1:]  # intermediates read elsewhere (Shape): from the dense nodes
            if others:  # (this drops the values no later step reads, the MLP's input among them)
                self._run(index, session, step.inputs, others)
            live = self.stages._live_after[index]
            for state, output in zip(self.states, outputs):
                state[mlp.output] = output
                for name in [n for n in state if n not in live]:
                    del state[name]
        self.position += 1

    def finish(self) -> list[np.ndarray]:
        """Run the remaining steps (dense MLPs); the first graph output of each run, as rows."""
        while self.position < len(self.stages.steps):
            step = self.stages.steps[self.position]
            if step.kind == "mlp":
                self.apply(step.mlp)
            else:
                self._segment()
        first = self.stages.outputs[0]
        return [token_rows(state[first], run) for state, run in zip(self.states, self.runs)]

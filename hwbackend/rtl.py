"""Verilog-2001 for `WeightlessBlock` integer cores, specialised on the block's actual parameters.

A block is a set of small modules (so synthesis runs per stage and per chunk, in parallel, cached by
content): thermometer chunks, LUT-layer chunks (one `quweit_lut` instance per table, so synthesis maps a
64-entry table to exactly one LUT6) and summation chunks, wired by the block module, with an optional
register after each stage. What the parameters allow is left out or made cheaper:
- only live logic: a LUT whose bit no later stage reads (a zero encoded value, an unread hidden LUT) is not
  emitted, nor a thermometer bit that no live LUT reads; equal comparators (same feature and threshold)
  are one wire, and `q > qmax` is the constant 0;
- the sum of each output adds, per distinct encoded value V, `V * popcount(bits of that value)` (shifts
  and adds, no multiplier), so the popcount form (all values of a group equal, DWN's GroupSum) is one
  popcount tree; each adder is exactly as wide as its own operands' value range needs, and the result is
  sign-extended to 32 bits by wiring.
Every thermometer and LUT bit is its own scalar wire (iverilog runs ~25x faster than with shared vectors).
The structure is computed here; the Verilog text comes from templates/verilog/ (one renderer).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
from quweit.custom_ops import WeightlessBlockParams

from .render import render

ACC_BITS = 32
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Items per chunk module: features of a thermometer chunk, LUTs of a layer chunk, outputs of a sum chunk.
THERMOMETER_CHUNK = 64
LAYER_CHUNK = 512
SUM_CHUNK = 64
ZERO = "1'b0"


def verilog_name(text: str, *, prefix: str = "quweit_") -> str:
    """A legal, readable Verilog identifier derived from an ONNX node or TVM symbol name."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "block"
    name = cleaned if cleaned.startswith(prefix) else prefix + cleaned
    assert _IDENTIFIER.match(name), name
    return name


def signed_literal(value: int, width: int) -> str:
    """A sized signed hex literal, e.g. -3 in 8 bits -> 8'shfd (two's complement, no unary minus)."""
    return f"{width}'sh{value & ((1 << width) - 1):0{(width + 3) // 4}x}"


def init_literal(bits: list[int]) -> str:
    """A LUT's table as one INIT constant: bit a of the literal is the output for address a."""
    value = sum(bit << a for a, bit in enumerate(bits))
    return f"{len(bits)}'h{value:0{(len(bits) + 3) // 4}x}"


def signed_width(low: int, high: int) -> int:
    """Bits of the narrowest two's complement type holding every integer in [low, high]."""
    return max(1 + (v if v >= 0 else -v - 1).bit_length() for v in (low, high))


@dataclasses.dataclass(frozen=True)
class Net:
    """One signed wire of a sum tree: `kind` says how it is computed from operands `a`, `b` (wire names or
    a literal) and `shift`; [low, high] is the range of values it can take, which sets its width."""

    name: str
    kind: str  # bit: {1'b0, a} | select: a ? value : 0 | add: a + b | shift: a <<< shift | neg: -a
    #            const: value | offset: a + value
    low: int
    high: int
    a: str = ""
    b: str = ""
    shift: int = 0
    value: int = 0

    @property
    def width(self) -> int:
        return signed_width(self.low, self.high)

    @property
    def literal(self) -> str:
        """`value` as a literal of this net's width (select, const and offset nets)."""
        return signed_literal(self.value, self.width)


@dataclasses.dataclass(frozen=True)
class Module:
    """One generated Verilog module: its stage ("thermometer", "layer<k>", "sum", "block") and text."""

    name: str
    stage: str
    text: str


class _SumBuilder:
    """Nets of one output's conditional sum (see the module docstring)."""

    def __init__(self, prefix: str):
        self.prefix, self.nets = prefix, []

    def net(self, kind: str, low: int, high: int, **operands) -> Net:
        net = Net(f"{self.prefix}_{len(self.nets)}", kind, low, high, **operands)
        self.nets.append(net)
        return net

    def add(self, a: Net, b: Net) -> Net:
        return self.net("add", a.low + b.low, a.high + b.high, a=a.name, b=b.name)

    def tree(self, terms: list[Net]) -> Net:
        """A balanced tree of two-input adders over `terms` (pairs level by level)."""
        level = list(terms)
        while len(level) > 1:
            level = [self.add(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)] + (
                [level[-1]] if len(level) % 2 else [])
        return level[0]

    def scaled(self, count: Net, value: int) -> Net:
        """`value * count` from shifted copies of `count` (binary digits of |value|) and a negation."""
        parts = []
        for s in range(abs(value).bit_length()):
            if abs(value) >> s & 1:
                parts.append(count if s == 0 else self.net("shift", count.low << s, count.high << s,
                                                           a=count.name, shift=s))
        total = self.tree(parts)
        return total if value > 0 else self.net("neg", -total.high, -total.low, a=total.name)

    def output(self, bits: list[str], values: list[int], bias: int) -> Net:
        """bias + sum of values[g] where bits[g] is 1; one popcount per distinct value."""
        terms = []
        for value in sorted(set(values), key=lambda v: (abs(v), v)):
            members = [bit for bit, v in zip(bits, values) if v == value]
            if len(members) == 1:
                terms.append(self.net("select", min(0, value), max(0, value), a=members[0], value=value))
            else:
                count = self.tree([self.net("bit", 0, 1, a=bit) for bit in members])
                terms.append(self.scaled(count, value))
        if not terms:
            return self.net("const", bias, bias, value=bias)
        total = self.tree(terms)
        if bias == 0:
            return total
        return self.net("offset", total.low + bias, total.high + bias, a=total.name, value=bias)


def _chunks(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)] or [[]]


@dataclasses.dataclass(frozen=True)
class RtlBlock:
    """One block to emit: its Verilog module name, parameters, pipelining choice and ONNX node."""

    name: str
    params: WeightlessBlockParams
    pipeline: bool = False
    node: str | None = None

    @property
    def latency(self) -> int:
        """Clock cycles from q to acc: 0 combinational; pipelined, thermometer + each layer + sum."""
        return self.params.num_layers + 2 if self.pipeline else 0

    @property
    def q_width(self) -> int:
        return self.params.in_features * self.params.input_bits

    @property
    def acc_width(self) -> int:
        return self.params.out_features * ACC_BITS

    @functools.cached_property
    def structure(self) -> dict:
        return _structure(self.params)

    def modules(self) -> list[Module]:
        """Every module of the block: stage chunks first, then the block module that wires them."""
        return _modules(self)

    def text(self) -> str:
        """The Verilog of the block: a header and every module."""
        header = render("verilog/header.v.j2", name=self.name, node=self.node, pipeline=self.pipeline,
                        latency=self.latency, **self.params.attributes())
        return header + "".join(m.text for m in self.modules())


def _structure(p: WeightlessBlockParams) -> dict:
    """Live logic (see the module docstring): which bits, LUTs and sum terms the hardware needs."""
    T, G, K = p.thresholds_per_feature, p.group_size, p.num_layers
    values = p.encoded_values.astype(np.int64)
    live = [np.zeros(size, dtype=bool) for size in p.layer_sizes]
    live[-1] = values != 0
    for k in range(K - 1, 0, -1):
        rows = p.layer_rows(k)
        live[k - 1][np.unique(p.mapping[rows][live[k]])] = True
    first = p.mapping[p.layer_rows(0)][live[0]]
    used = np.unique(first) if first.size else np.zeros(0, dtype=np.int64)
    # thermometer bit j -> its wire: one wire per distinct (feature, threshold); q > qmax is constant 0
    canonical: dict[tuple[int, int], int] = {}
    therm_wire: dict[int, str] = {}
    for j in used.tolist():
        i, t = divmod(j, T)
        threshold = int(p.thresholds[i, t])
        if threshold >= p.qmax:
            therm_wire[j] = ZERO
            continue
        first_j = canonical.setdefault((i, threshold), j)
        therm_wire[j] = f"t_{first_j}"
    outputs = []
    for o in range(p.out_features):
        group = [g for g in range(o * G, (o + 1) * G) if live[-1][g]]
        bits = [f"l{K - 1}_{g}" for g in group]
        builder = _SumBuilder(f"s{o}")
        top = builder.output(bits, [int(values[g]) for g in group], int(p.bias[o]))
        outputs.append({"index": o, "nets": builder.nets, "top": top, "inputs": bits})
    return {"live": live, "therm_wire": therm_wire, "comparators": sorted(canonical.values()), "outputs": outputs}


def _modules(block: RtlBlock) -> list[Module]:
    p, name, pipe = block.params, block.name, block.pipeline
    T, B = p.thresholds_per_feature, p.input_bits
    s = block.structure
    live, therm_wire = s["live"], s["therm_wire"]
    modules, instances, registers = [], [], []

    def reg(wire: str) -> str:  # the name a later stage reads
        return wire if wire == ZERO or not pipe else wire.replace("_", "r_", 1)

    # thermometer chunks, by feature
    by_feature: dict[int, list[int]] = {}
    for j in s["comparators"]:
        by_feature.setdefault(j // T, []).append(j)
    features = sorted(by_feature)
    for c, chunk in enumerate(_chunks(features, THERMOMETER_CHUNK)):
        if not chunk:
            continue
        bits = [{"wire": f"t_{j}", "feature": j // T, "threshold": signed_literal(int(p.thresholds[j // T, j % T]), B)}
                for i in chunk for j in by_feature[i]]
        module = f"{name}_thermometer{c}"
        modules.append(Module(module, "thermometer", render(
            "verilog/thermometer.v.j2", name=module, B=B, features=chunk, bits=bits)))
        instances.append({"module": module, "ports": [(f"q_{i}", f"q_{i}") for i in chunk]
                          + [(b["wire"], b["wire"]) for b in bits]})
        registers += [b["wire"] for b in bits]
    stage_registers = [registers]

    # LUT layers, in chunks of LUTs
    table_bits = p.table_bits()
    source = therm_wire
    for k in range(p.num_layers):
        rows = p.layer_rows(k)
        luts = np.flatnonzero(live[k]).tolist()
        outputs = {}
        layer_registers = []
        for c, chunk in enumerate(_chunks(luts, LAYER_CHUNK)):
            if not chunk:
                continue
            entries, inputs = [], []
            for j in chunk:
                row = rows.start + j
                address = [source[int(p.mapping[row, l])] for l in reversed(range(p.lut_inputs))]
                inputs += [a for a in address if a != ZERO]
                entries.append({"out": f"l{k}_{j}", "init": init_literal([int(b) for b in table_bits[row]]),
                                "address": address})
                outputs[j] = f"l{k}_{j}"
            inputs = sorted(set(inputs), key=_wire_order)
            module = f"{name}_layer{k}_{c}"
            modules.append(Module(module, f"layer{k}", render(
                "verilog/layer.v.j2", name=module, n=p.lut_inputs, inputs=inputs, luts=entries)))
            instances.append({"module": module, "ports": [(w, reg(w)) for w in inputs]
                              + [(e["out"], e["out"]) for e in entries]})
            layer_registers += [e["out"] for e in entries]
        stage_registers.append(layer_registers)
        source = {j: wire for j, wire in outputs.items()}

    # conditional summation, in chunks of outputs
    outputs = s["outputs"]
    sum_wires = []
    for c, chunk in enumerate(_chunks(outputs, SUM_CHUNK)):
        inputs = sorted({b for out in chunk for b in out["inputs"]}, key=_wire_order)
        module = f"{name}_sum{c}"
        modules.append(Module(module, "sum", render("verilog/sum.v.j2", name=module, inputs=inputs, outputs=chunk)))
        instances.append({"module": module, "ports": [(w, reg(w)) for w in inputs]
                          + [(f"sum_{out['index']}", f"sum_{out['index']}") for out in chunk]})
        sum_wires += [{"index": out["index"], "width": out["top"].width} for out in chunk]

    modules.append(Module(name, "block", render(
        "verilog/block.v.j2", name=name, pipeline=pipe, din=p.in_features, dout=p.out_features, B=B,
        features=sorted(set(features)), wires=[w for stage in stage_registers for w in stage],
        stage_registers=stage_registers, instances=instances, sums=sum_wires)))
    return modules


def _wire_order(wire: str) -> tuple[str, int]:
    stem, _, index = wire.rpartition("_")
    return stem, int(index)


def render_lut() -> str:
    """The shared `quweit_lut` primitive."""
    return render("verilog/quweit_lut.v.j2")


def render_block(block: RtlBlock) -> str:
    """The Verilog of one block (its stage modules and the block module)."""
    return block.text()


def render_top(name: str, blocks: list[RtlBlock]) -> str:
    """A top module instantiating every block with its own ports."""
    return render("verilog/top.v.j2", name=name, blocks=blocks)


def render_testbench(block: RtlBlock, vectors: int, input_file: str, expected_file: str) -> str:
    """A self-checking testbench streaming `vectors` q vectors through `block`."""
    return render(
        "verilog/testbench.v.j2", name=block.name, vectors=vectors, latency=block.latency,
        dout=block.params.out_features, q_width=block.q_width, acc_width=block.acc_width,
        input_file=input_file, expected_file=expected_file,
    )

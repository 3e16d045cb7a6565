"""Verilog-2001 for `WeightlessBlock` integer cores: one module per block (thermometer, LUT layers with one
INIT constant per LUT, conditional-summation adder tree, output stage), an optional register after each
stage, a top module over several blocks, and a self-checking testbench.

Every thermometer and LUT bit is its own scalar wire (iverilog runs ~25x faster than with shared vectors),
and each LUT layer is its own module so synthesis maps a 64-entry table to exactly one LUT6.
"""

from __future__ import annotations

import dataclasses
import re

from quweit.custom_ops import WeightlessBlockParams

from .render import render

ACC_BITS = 32
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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


@dataclasses.dataclass(frozen=True)
class RtlBlock:
    """One block to emit: its Verilog module name, parameters and pipelining choice."""

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


def sum_width(bias: int, values: list[int]) -> int:
    """Bits of one output's adder tree: every partial sum is bounded by |bias| + sum |values| (the
    validator keeps that <= 2^31 - 1), so narrower adders are exact; the result is sign-extended to 32."""
    return min(ACC_BITS, (abs(bias) + sum(abs(v) for v in values)).bit_length() + 1)


def balanced_tree(leaves: list):
    """Pair `leaves` level by level into a balanced binary tree of nested [left, right] lists
    (the template renders each pair as one two-input adder)."""
    level = list(leaves)
    while len(level) > 1:
        level = [[level[k], level[k + 1]] for k in range(0, len(level) - 1, 2)] + (
            [level[-1]] if len(level) % 2 else [])
    return level[0]


def block_slots(block: RtlBlock) -> dict[str, object]:
    """The template slots of one block: every wire, constant and connection, computed once here."""
    p = block.params
    T, B, G = p.thresholds_per_feature, p.input_bits, p.group_size
    therm = [
        {"index": i * T + t, "feature": i, "threshold": signed_literal(int(p.thresholds[i, t]), B)}
        for i in range(p.in_features)
        for t in range(T)
    ]
    table_bits = p.table_bits()
    layers, source = [], "tr" if block.pipeline else "t"
    for k in range(p.num_layers):
        rows = p.layer_rows(k)
        luts = []
        for j, row in enumerate(range(rows.start, rows.stop)):
            slots = p.mapping[row]
            luts.append({
                "index": j,
                "init": init_literal([int(b) for b in table_bits[row]]),
                # concatenation is MSB first: slot n-1 ... slot 0 (slot l drives address bit l)
                "address": [f"i_{int(slots[l])}" for l in reversed(range(p.lut_inputs))],
            })
        layers.append({"k": k, "inputs": p.layer_input_size(k), "luts": luts, "source": source})
        source = f"l{k}r" if block.pipeline else f"l{k}"
    outputs = []
    for o in range(p.out_features):
        values = [int(v) for v in p.encoded_values[o * G:(o + 1) * G]]
        width = sum_width(int(p.bias[o]), values)
        leaves = [{"bit": o * G + g, "value": signed_literal(v, width)} for g, v in enumerate(values)]
        outputs.append({"index": o, "tree": balanced_tree(leaves), "width": width,
                        "bias": signed_literal(int(p.bias[o]), width)})
    return {
        "name": block.name, "node": block.node, "pipeline": block.pipeline, "latency": block.latency,
        "din": p.in_features, "dout": p.out_features, "T": T, "B": B, "G": G, "n": p.lut_inputs,
        "layer_sizes": list(p.layer_sizes), "therm": therm, "layers": layers, "outputs": outputs,
        "sum_inputs": p.layer_sizes[-1], "sum_source": source,
    }


def render_block(block: RtlBlock) -> str:
    """The Verilog of one block (its four stage modules and the block module)."""
    return render("verilog/block.v.j2", **block_slots(block))


def render_lut() -> str:
    """The shared `quweit_lut` primitive."""
    return render("verilog/quweit_lut.v.j2")


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

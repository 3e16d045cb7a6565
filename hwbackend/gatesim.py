"""Zero-delay simulation of Yosys' generic gate netlists (`abc -g ...`, written as JSON) on many input
vectors at once, counting the toggles of every gate output between consecutive vectors.

Hand-written because the job is small and no library evaluates a Yosys JSON netlist on numpy arrays:
event-driven simulators (Icarus, Verilator) give the same values (the gate-level testbench checks that)
but no per-gate toggle counts without dumping every net. Each gate output is one boolean row over the
vectors; gates are evaluated in topological order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

_OPS = {
    "$_BUF_": lambda a, b, s: a,
    "$_NOT_": lambda a, b, s: ~a,
    "$_AND_": lambda a, b, s: a & b,
    "$_NAND_": lambda a, b, s: ~(a & b),
    "$_OR_": lambda a, b, s: a | b,
    "$_NOR_": lambda a, b, s: ~(a | b),
    "$_XOR_": lambda a, b, s: a ^ b,
    "$_XNOR_": lambda a, b, s: ~(a ^ b),
    "$_ANDNOT_": lambda a, b, s: a & ~b,
    "$_ORNOT_": lambda a, b, s: a | ~b,
    "$_MUX_": lambda a, b, s: np.where(s, b, a),
}


@dataclasses.dataclass(frozen=True)
class Netlist:
    """A flat gate netlist: ports (name -> bit ids, LSB first) and gates (type, A, B, S, Y) in topological order."""

    inputs: dict[str, list]
    outputs: dict[str, list]
    gates: list[tuple[str, object, object, object, int]]

    @property
    def gate_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, *_ in self.gates:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


@functools.lru_cache(maxsize=256)
def load_netlist(path: Path) -> Netlist:
    """Read `write_json` output of a flattened module of generic gates."""
    modules = json.loads(Path(path).read_text())["modules"]
    (module,) = [m for m in modules.values() if not m.get("attributes", {}).get("blackbox")]
    inputs = {n: p["bits"] for n, p in module["ports"].items() if p["direction"] == "input"}
    outputs = {n: p["bits"] for n, p in module["ports"].items() if p["direction"] == "output"}
    pending = []
    for cell in module["cells"].values():
        kind = cell["type"]
        if kind == "$scopeinfo":  # flattening's record of the hierarchy, no logic
            continue
        if kind not in _OPS:
            raise ValueError(f"{path}: cell type {kind} is not a generic gate")
        c = cell["connections"]
        pending.append((kind, c.get("A", [None])[0], c.get("B", [None])[0], c.get("S", [None])[0], c["Y"][0]))
    return Netlist(inputs, outputs, _topological(pending, {b for bits in inputs.values() for b in bits}))


def _topological(gates: list, known: set) -> list:
    """Kahn's order: a gate comes after the gates driving its inputs (constants and ports are known)."""
    driver = {g[4]: k for k, g in enumerate(gates)}
    users: dict[int, list[int]] = {}
    waiting = []
    for k, (_, a, b, s, _) in enumerate(gates):
        deps = {x for x in (a, b, s) if isinstance(x, int) and x in driver}
        waiting.append(len(deps))
        for d in deps:
            users.setdefault(driver[d], []).append(k)
    ready = [k for k, n in enumerate(waiting) if n == 0]
    order = []
    while ready:
        k = ready.pop()
        order.append(gates[k])
        for user in users.get(k, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) != len(gates):
        raise ValueError("gate netlist has a combinational loop")
    return order


def simulate(netlist: Netlist, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Drive every input port with `inputs[name]`: bool `[V, width]` (bit 0 first). Returns the output
    ports as bool `[V, width]` and the toggles per gate type summed over the V - 1 transitions."""
    vectors = len(next(iter(inputs.values()))) if inputs else 0
    values: dict[object, np.ndarray] = {"0": np.zeros(vectors, bool), "1": np.ones(vectors, bool),
                                        "x": np.zeros(vectors, bool), "z": np.zeros(vectors, bool)}
    for name, bits in netlist.inputs.items():
        given = np.asarray(inputs[name], dtype=bool).reshape(vectors, len(bits))
        for k, bit in enumerate(bits):
            values[bit] = given[:, k]
    toggles: dict[str, int] = {}
    for kind, a, b, s, y in netlist.gates:
        out = _OPS[kind](values.get(a), values.get(b), values.get(s))
        values[y] = out
        toggles[kind] = toggles.get(kind, 0) + int(np.count_nonzero(out[1:] != out[:-1]))
    outputs = {name: np.stack([values[bit] for bit in bits], axis=1) if bits else np.zeros((vectors, 0), bool)
               for name, bits in netlist.outputs.items()}
    return outputs, toggles


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Integers `[V]` -> two's complement bits `[V, width]`, bit 0 first."""
    return ((np.asarray(values, dtype=np.int64)[:, None] >> np.arange(width)) & 1).astype(bool)


def from_bits(bits: np.ndarray, *, signed: bool = True) -> np.ndarray:
    """Bits `[V, width]` (bit 0 first) -> int64 `[V]`."""
    width = bits.shape[1]
    value = (bits.astype(np.int64) << np.arange(width)).sum(1)
    if signed and width:
        value -= bits[:, -1].astype(np.int64) << width
    return value

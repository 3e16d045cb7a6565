"""TVM: the ONNX frontend converter (native TE lowering) and the BYOC C path equal the numpy oracle and
onnxruntime (the op's ONNX function and the project's C++ kernel) bit for bit; the partition offloads
exactly the blocks, and nothing when there are none."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from blocks import adversarial_inputs
from hw_support import block, build_tvm, run_kernel, run_ort, run_vm, same_bits
from onnx import TensorProto, helper, numpy_helper
from quweit.custom_ops import attach_decomposition, evaluate, make_block_model, make_block_node
from quweit.hwbackend import frontend
from quweit.hwbackend.patterns import partition_for_quweit
from quweit.onnxio import load_model
from tvm import relax

CASES = [(n, layers) for n in range(1, 9) for layers in (1, 2, 3) if (n + layers) % 2 == 0] + [(6, 1), (8, 3)]


def byoc(mod):
    return relax.transform.RunCodegen()(partition_for_quweit(mod))


def offloaded_symbols(mod) -> list[str]:
    """Names of external (call_dps_packed) functions that main calls."""
    calls = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_dps_packed":
            calls.append(str(expr.args[0].global_symbol))

    relax.analysis.post_order_visit(mod["main"], visit)
    return calls


#: Output scales that make the dequantized outputs ordinary, denormal, or overflow to +-inf.
OUTPUT_SCALES = {"normal": None, "denormal": 3e-41, "overflow": 3e38}


def _edge_block(n: int, layers: int):
    """A block of CASES whose input width and output scale cycle through the edge cases."""
    bits = (2, 8, 16, 12)[(n + layers) % 4]
    params = block(1000 + 10 * n + layers, n=n, layers=layers, d_in=5, d_out=4, T=4, bits=bits)
    scale = list(OUTPUT_SCALES.values())[(n + 2 * layers) % 3]
    if scale is not None:
        signs = np.where(np.arange(4) % 2, -1.0, 1.0)
        params = params.replace(output_scale=(signs * scale).astype(np.float32))
    return params


def edge_kinds(params, x: np.ndarray) -> set[str]:
    """Which edge cases of spec 3.1/3.5 the input `x` (and the block's outputs on it) exercise."""
    with np.errstate(over="ignore", invalid="ignore"):
        p = x.astype(np.float32) * params.input_scale  # the spec's binary32 product
    y = evaluate(params, x)
    with np.errstate(invalid="ignore"):
        return {name for name, hit in {
            "nan": np.isnan(x).any(), "inf": np.isinf(x).any(),
            "tie": (np.abs(p - np.trunc(p)) == 0.5).any(),
            "saturation": (np.isfinite(p) & ((p > params.qmax + 1) | (p < params.qmin - 1))).any(),
            "denormal": ((x != 0) & (np.abs(x) < np.finfo(np.float32).tiny)).any(),
            "denormal_out": ((y != 0) & (np.abs(y) < np.finfo(np.float32).tiny)).any(),
            "inf_out": np.isinf(y).any(),
        }.items() if hit}


@pytest.mark.parametrize("n,layers", CASES)
def test_native_and_byoc_match_reference_and_onnxruntime(n, layers, tmp_path):
    """Adversarial inputs (exact rounding ties, saturation, NaN, +-inf, denormals) and outputs (denormal,
    overflowing), through TVM's native lowering and the BYOC C path, onnxruntime's decomposition and the
    kernel: all equal the reference bit for bit."""
    params = _edge_block(n, layers)
    model = make_block_model(params)
    native = build_tvm(frontend.from_onnx(model), tmp_path, "native")
    offloaded_mod = byoc(frontend.from_onnx(model))
    assert len(offloaded_symbols(offloaded_mod)) == 1
    offloaded = build_tvm(offloaded_mod, tmp_path, "byoc")
    shapes = [(4, 60, 5), (1, 1, 5), (0, 3, 5)]
    big = adversarial_inputs(params, shapes[0][:-1], seed=n * 10 + layers)
    assert {"nan", "inf", "tie", "saturation", "denormal"} <= edge_kinds(params, big)
    for shape in shapes:
        x = big if shape == shapes[0] else adversarial_inputs(params, shape[:-1], seed=n)
        want = evaluate(params, x)
        assert same_bits(run_vm(native, x), want), shape
        assert same_bits(run_vm(offloaded, x), want), shape
        assert same_bits(run_ort(model, {"X": x})[0], want), shape
        assert same_bits(run_kernel(model, {"X": x})[0], want), shape


def _chain_model():
    """MatMul -> block -> Relu -> block, with small-integer weights so the float MatMul is exact everywhere."""
    rng = np.random.default_rng(4)
    first = block(21, n=6, layers=2, d_in=4, d_out=5)
    second = block(22, n=3, layers=1, d_in=5, d_out=3)
    weight = (rng.integers(-4, 5, size=(4, 4)) / 4).astype(np.float32)
    node1, init1 = make_block_node(first, "h", "a", prefix="b1.", name="block_1")
    node2, init2 = make_block_node(second, "r", "Y", prefix="b2.", name="block_2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["h"]), node1, helper.make_node("Relu", ["a"], ["r"]), node2],
        "chain",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weight, "W"), *init1, *init2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return attach_decomposition(model), first, second, weight


def test_edge_outputs_are_covered():
    """Across CASES, outputs are denormal for some blocks and overflow to +-inf for others."""
    kinds = set()
    for n, layers in CASES:
        params = _edge_block(n, layers)
        kinds |= edge_kinds(params, adversarial_inputs(params, (4, 60), seed=n * 10 + layers))
    assert {"denormal_out", "inf_out"} <= kinds


def test_partition_offloads_only_the_blocks_of_a_mixed_graph(tmp_path):
    model, first, second, weight = _chain_model()
    mod = byoc(frontend.from_onnx(model))
    assert len(offloaded_symbols(mod)) == 2
    text = mod["main"].script()
    assert "R.matmul" in text and "R.nn.relu" in text  # the rest stays with TVM
    x = (np.random.default_rng(0).integers(-40, 40, size=(9, 4)) / 2).astype(np.float32)
    want = evaluate(second, np.maximum(evaluate(first, x @ weight), 0))
    assert same_bits(run_vm(build_tvm(mod, tmp_path, "chain"), x), want)
    assert same_bits(run_vm(build_tvm(frontend.from_onnx(model), tmp_path, "chain_native"), x), want)
    assert same_bits(run_ort(model, {"X": x})[0], want)


def test_nothing_offloaded_without_blocks():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["h"]), helper.make_node("Relu", ["h"], ["Y"])],
        "dense",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")],
    )
    mod = frontend.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    partitioned = partition_for_quweit(mod)
    tvm.ir.assert_structural_equal(partitioned, mod)
    assert offloaded_symbols(relax.transform.RunCodegen()(partitioned)) == []


def test_registration_is_idempotent_and_undone():
    from tvm.relax.frontend.onnx import onnx_frontend

    frontend.unregister_onnx_converter()
    original = onnx_frontend._get_convert_map
    assert "WeightlessBlock" not in original()
    with frontend.onnx_converter():
        frontend.register_onnx_converter()  # twice: still one wrapper
        assert onnx_frontend._get_convert_map.__wrapped__ is original
        assert "WeightlessBlock" in onnx_frontend._get_convert_map()
    assert onnx_frontend._get_convert_map is original
    with pytest.raises(tvm.error.OpNotImplemented, match="WeightlessBlock"):
        relax.frontend.onnx.from_onnx(make_block_model(block(1, n=2, layers=1)))


def test_invalid_block_is_rejected_with_its_node_name():
    params = block(2, n=2, layers=1)
    model = make_block_model(params)
    table = next(t for t in model.graph.initializer if t.name.endswith("tables"))
    bad = numpy_helper.to_array(table).copy()
    bad[0, 0] = np.uint64(1 << 40)  # bits above 2^n set
    table.CopyFrom(numpy_helper.from_array(bad, table.name))
    with pytest.raises(ValueError, match="node 'block'.*'tables'"):
        frontend.from_onnx(model)


def test_missing_input_bits_is_rejected_not_defaulted():
    model = make_block_model(block(2, n=2, layers=1, bits=6))
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "input_bits"]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(ValueError, match="node 'block'.*'input_bits': attribute is missing"):
        frontend.from_onnx(model)


@pytest.fixture(scope="module")
def converted_bert(tmp_path_factory):
    """A random-weight BERT (tests/models.py), its MLPs replaced by random blocks by the converter."""
    import models
    from quweit.converter.convert import replace_mlps

    family = models.FAMILIES["bert"]
    path = models.export(family, "legacy", tmp_path_factory.mktemp("bert") / "bert.onnx")
    converted, _ = replace_mlps(load_model(path))
    feeds = models.reference_inputs(family, 2, 5)
    return converted, feeds


def test_converted_transformer_blocks_bit_exact(converted_bert, tmp_path):
    """Each block of the converted transformer, on the activations it really receives there."""
    from quweit.custom_ops import block_nodes, read_blocks
    from quweit.onnxio import capture

    model, feeds = converted_bert
    blocks = read_blocks(model)
    assert len(blocks) == 2
    names = [node.input[0] for node in block_nodes(model)]
    captured = capture(model, [feeds], names, kernel=False)
    for k, (params, x) in enumerate(zip(blocks, (captured[n] for n in names))):
        single = make_block_model(params, ("rows",))
        want = evaluate(params, x)
        assert same_bits(run_vm(build_tvm(frontend.from_onnx(single), tmp_path, f"n{k}"), x), want)
        assert same_bits(run_vm(build_tvm(byoc(frontend.from_onnx(single)), tmp_path, f"b{k}"), x), want)
        assert same_bits(run_ort(single, {"X": x})[0], want)
        assert same_bits(run_kernel(single, {"X": x})[0], want)


def test_converted_transformer_end_to_end(converted_bert, tmp_path):
    """The whole converted model in TVM: BYOC offloads both blocks and equals the native lowering bit for
    bit; against onnxruntime the non-block float ops (MatMul, Erf, Softmax) differ in rounding only."""
    model, feeds = converted_bert
    inputs = [feeds[i.name] for i in model.graph.input if i.name in feeds]
    byoc_mod = byoc(frontend.from_onnx(model))
    assert len(offloaded_symbols(byoc_mod)) == 2
    got_byoc = run_vm(build_tvm(byoc_mod, tmp_path, "bert_byoc"), *inputs)
    got_native = run_vm(build_tvm(frontend.from_onnx(model), tmp_path, "bert_native"), *inputs)
    assert same_bits(got_byoc, got_native)
    np.testing.assert_allclose(got_byoc, run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4)

"""Random-weight transformers of seven families, both torch exporters: exactly one MLP per layer is found
and replaced, nothing else matches, and the converted model passes the full checker and runs in stock
onnxruntime (function decomposition) with the original output shapes and dynamic dimensions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import EXPORT_SHAPE, EXPORTERS, FAMILIES, LAYERS, export, reference_inputs
from quweit.converter.convert import replace_mlps
from quweit.converter.detect import find_mlps, prepare
from quweit.custom_ops import evaluate, read_blocks
from quweit.onnxio import capture, load_model, make_session

CASES = [(f, e) for f in FAMILIES for e in EXPORTERS]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    cache: dict[tuple[str, str], onnx.ModelProto] = {}

    def get(family: str, exporter: str) -> onnx.ModelProto:
        if (family, exporter) not in cache:
            path = tmp_path_factory.mktemp("models") / f"{family}_{exporter}.onnx"
            export(FAMILIES[family], exporter, path)
            cache[family, exporter] = load_model(path)
        return cache[family, exporter]

    return get


def mlp_forward(mlp, x: np.ndarray) -> np.ndarray:
    """The dense MLP from the weights the detector read (float64 torch, for comparison with onnxruntime)."""
    import torch
    import torch.nn.functional as F

    acts = {"gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "relu": F.relu, "silu": F.silu,
            "quick_gelu": lambda h: h * torch.sigmoid(1.702 * h)}

    def linear(v, w, b):
        y = v @ torch.tensor(w, dtype=torch.float64)
        return y if b is None else y + torch.tensor(b, dtype=torch.float64)

    t = torch.from_numpy(x).double()
    h = acts[mlp.activation](linear(t, mlp.w_up, mlp.b_up))
    if mlp.w_gate is not None:
        h = acts[mlp.activation](linear(t, mlp.w_gate, mlp.b_gate)) * linear(t, mlp.w_up, mlp.b_up)
    return linear(h, mlp.w_down, mlp.b_down).numpy()


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = make_session(model, kernel=False)
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


@pytest.mark.parametrize("family,exporter", CASES, ids=[f"{f}-{e}" for f, e in CASES])
def test_every_mlp_found_replaced_and_runs(exported, family, exporter):
    model = exported(family, exporter)
    prepared = prepare(model)
    detection = find_mlps(prepared)
    assert len(detection.mlps) == LAYERS, [m.summary()["nodes"] for m in detection.mlps]
    assert {m.family for m in detection.mlps} == {FAMILIES[family].mlp_family}
    # nothing but MLPs matched: each match is a residual MLP of the configured widths
    assert all(m.d_in == m.d_out == 32 for m in detection.mlps)

    # the weights read from the graph reproduce what onnxruntime computes for each MLP
    feeds = reference_inputs(FAMILIES[family], *EXPORT_SHAPE)
    values = capture(prepared, [feeds], [n for m in detection.mlps for n in (m.input, m.output)], kernel=False)
    for mlp in detection.mlps:
        np.testing.assert_allclose(mlp_forward(mlp, values[mlp.input]), values[mlp.output], rtol=1e-4, atol=1e-5)

    converted, report = replace_mlps(model)
    assert report["mlps_found"] == report["mlps_replaced"] == LAYERS
    blocks = [n for n in converted.graph.node if n.domain == "quweit"]
    assert len(blocks) == LAYERS and {n.op_type for n in blocks} == {"WeightlessBlock"}
    onnx.checker.check_model(converted, full_check=True)

    # each block in the converted graph computes exactly the oracle (decomposition, bit for bit)
    blocks_values = capture(converted, [feeds], [n for m in detection.mlps for n in (m.input, m.output)], kernel=False)
    for mlp, params in zip(detection.mlps, read_blocks(converted)):
        expected = evaluate(params, blocks_values[mlp.input])
        assert np.array_equal(blocks_values[mlp.output].view(np.int32), expected.view(np.int32))

    assert [_dims(i) for i in converted.graph.input] == [_dims(i) for i in model.graph.input]
    # output dims: the exporter's, except that shape inference may pin a symbol to a constant the model
    # fixes (ViT's sequence); the symbolic dims of the inputs stay symbolic (checked by running below)
    input_symbols = {d for i in model.graph.input for d in _dims(i) if isinstance(d, str)}
    for before, after in zip(_dims(model.graph.output[0]), _dims(converted.graph.output[0])):
        assert after == before or (isinstance(before, str) and isinstance(after, int) and before not in input_symbols)
    shapes = [(1, 3), (3, 7)]
    if exporter == "legacy" and FAMILIES[family].legacy_static:
        with pytest.raises(Exception, match="Reshape"):  # the exported original is static: see models.Family
            _run(prepared, reference_inputs(FAMILIES[family], 3, 7))
        shapes = [EXPORT_SHAPE]
    for batch, seq in shapes:
        feeds = reference_inputs(FAMILIES[family], batch, seq)
        original = _run(prepared, feeds)
        result = _run(converted, feeds)
        assert [r.shape for r in result] == [o.shape for o in original]
        assert np.isfinite(result[0]).all()

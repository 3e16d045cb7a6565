"""Random-weight transformers of seven families, both torch exporters: exactly one MLP per layer is found
and replaced, nothing else matches, and the converted model passes the full checker and runs in stock
onnxruntime (function decomposition) with the original output shapes and dynamic dimensions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quweit.converter.convert import replace_mlps
from quweit.converter.detect import find_mlps, prepare

from models import EXPORTERS, FAMILIES, LAYERS, export, reference_inputs

CASES = [(f, e) for f in FAMILIES for e in EXPORTERS]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    cache: dict[tuple[str, str], onnx.ModelProto] = {}

    def get(family: str, exporter: str) -> onnx.ModelProto:
        if (family, exporter) not in cache:
            path = tmp_path_factory.mktemp("models") / f"{family}_{exporter}.onnx"
            export(FAMILIES[family], exporter, path)
            cache[family, exporter] = onnx.load(str(path))
        return cache[family, exporter]

    return get


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
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

    converted, report = replace_mlps(model)
    assert report["mlps_found"] == report["mlps_replaced"] == LAYERS
    blocks = [n for n in converted.graph.node if n.domain == "quweit"]
    assert len(blocks) == LAYERS and {n.op_type for n in blocks} == {"WeightlessBlock"}
    onnx.checker.check_model(converted, full_check=True)

    assert [_dims(o) for o in converted.graph.output] == [_dims(o) for o in prepared.graph.output]
    assert [_dims(i) for i in converted.graph.input] == [_dims(i) for i in prepared.graph.input]
    for batch, seq in ((1, 3), (3, 7)):
        feeds = reference_inputs(FAMILIES[family], batch, seq)
        original = _run(prepared, feeds)
        result = _run(converted, feeds)
        assert [r.shape for r in result] == [o.shape for o in original]
        assert np.isfinite(result[0]).all()

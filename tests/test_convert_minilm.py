"""The embedded example: the shipped text, its tokenization, the export of the pretrained MiniLM and
its six MLPs (what `quweit-convert --example minilm` converts), and the embedding helper."""

from __future__ import annotations

import numpy as np
from quweit.converter import minilm
from quweit.converter.detect import find_mlps, prepare
from quweit.onnxio import load_model, make_session


def test_shipped_text_and_tokenization():
    texts = minilm.sentences()
    assert len(texts) == 20000 and all(texts) and len(set(texts)) == 19998
    inputs = minilm.calibration_inputs(8, offset=2992)
    assert set(inputs) == set(minilm.INPUT_NAMES)
    assert all(v.dtype == np.int64 and v.shape == inputs["input_ids"].shape for v in inputs.values())
    assert inputs["attention_mask"].sum(1).min() >= 3  # [CLS] word [SEP] at least


def test_embed_is_the_mean_over_real_tokens():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(minilm.embed(hidden, mask), [[1.0, 2.0], [6.0, 7.0]])
    assert abs(minilm.mean_cosine(hidden[:, 0], hidden[:, 0] * 3) - 1.0) < 1e-6


def test_export_has_six_gelu_mlps_and_dynamic_axes(tmp_path):
    path = minilm.export_minilm(tmp_path / "minilm.onnx")
    model = load_model(path)
    assert [i.name for i in model.graph.input] == list(minilm.INPUT_NAMES)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    detection = find_mlps(prepare(model))
    assert [(m.family, m.activation, m.shape) for m in detection.mlps] == [
        ("linear_act_linear", "gelu", "384->1536->384")] * 6
    assert len(detection.rejected) == 24  # q, k, v and attention output projections of six layers
    inputs = minilm.calibration_inputs(3)
    session = make_session(path, kernel=False)
    assert minilm.embed(session, inputs["attention_mask"], inputs).shape == (3, 384)

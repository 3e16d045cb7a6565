"""Converted transformers run on the kernel exactly as on the op's decomposition.

Tiny random-weight models of several families (tests/models.py) are exported, every MLP is replaced by
a random default-structure block (`replace_mlps`), and the converted model runs twice in onnxruntime:
with the kernel (decomposition functions removed, so only the kernel can run the blocks) and with the
decomposition only (stock onnxruntime). The outputs must be identical, at other batch/sequence sizes
than the export's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from models import FAMILIES, export, reference_inputs, without_decomposition
from quweit import onnxio
from quweit.converter.convert import replace_mlps
from quweit.onnxio import load_model
from quweit.runtime import make_session


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_converted_model_on_kernel_equals_decomposition(family, tmp_path):
    original = load_model(export(FAMILIES[family], "legacy", tmp_path / f"{family}.onnx"))
    converted, report = replace_mlps(original)
    assert report["mlps_replaced"] == report["mlps_found"] > 0
    feeds = reference_inputs(FAMILIES[family], batch=3, seq=40)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    stock = onnxio.make_session(converted, kernel=False, options=options)
    kernel = make_session(without_decomposition(converted), threads=2)
    expected, got = stock.run(None, feeds)[0], kernel.run(None, feeds)[0]
    assert got.shape == expected.shape and np.array_equal(got.view(np.int32), expected.view(np.int32))

"""The converter's one in-memory model, cut into steps at its MLPs: streams through the steps give what
the whole model gives (dense, with a block in place, forked part-way), each step's session is built once
however many passes use it, no session of the whole model is ever built, and the converted model that
is saved scores the fidelity that the stream measured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import FAMILIES, export, reference_inputs
from quweit.converter import calibrate, stages
from quweit.converter.convert import convert
from quweit.converter.detect import detect, normalise, rewrite_mlps
from quweit.custom_ops import random_params
from quweit.onnxio import first_output, load_model, make_session, runs

CASES = [("bert", "legacy"), ("llama", "dynamo"), ("gpt2", "dynamo")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages")
    return {case: load_model(export(FAMILIES[case[0]], case[1], folder / f"{case[0]}_{case[1]}.onnx"))
            for case in CASES}


def _data(family: str):
    data = reference_inputs(FAMILIES[family], 6, 9)
    data["attention_mask"][:, -3:] = 0
    return data


def _block(mlp, seed: int):
    return random_params(np.random.default_rng(seed), in_features=mlp.d_in, out_features=mlp.d_out,
                         thresholds_per_feature=3, lut_inputs=4)


@pytest.mark.parametrize("case", CASES, ids=[f"{f}-{e}" for f, e in CASES])
def test_streams_give_what_the_whole_model_gives(exported, case):
    family, _ = case
    model = normalise(exported[case])
    mlps = detect(model).mlps
    feeds = runs(model, _data(family), 4)
    whole = first_output(make_session(model), feeds)
    steps = stages.Stages(model, mlps)
    assert [s.kind for s in steps.steps].count("mlp") == len(mlps) == 2
    dense = stages.Stream(steps, feeds)
    for got, want in zip(dense.finish(), whole):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    block = _block(mlps[0], 1)
    with_block, _ = rewrite_mlps(model.clone(), {mlps[0].output: block})
    want = first_output(make_session(with_block), feeds)
    stream = stages.Stream(steps, feeds)
    stream.advance(0)
    fork = stream.fork()  # the original continues untouched beside it
    fork.apply(0, block)
    for got, expected in zip(fork.finish(), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for got, expected in zip(stream.finish(), whole):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_each_step_is_built_once_and_no_session_holds_the_whole_model(exported, monkeypatch):
    case = ("llama", "dynamo")
    built = []
    real = stages.make_session

    def counting(model, **kwargs):
        built.append(len(model.graph.node) if isinstance(model, onnx.ModelProto) else sum(1 for _ in model.graph))
        return real(model, **kwargs)

    monkeypatch.setattr(stages, "make_session", counting)
    whole = sum(1 for _ in normalise(exported[case]).graph)
    _, report = convert(exported[case], calib=_data("llama"), progress=False)  # sensitivity on: forks
    assert report["mlps_replaced"] == 2 and "fidelity_alone" in report["mlps"][1]
    steps = 2 * 2 + 1  # segment + MLP per MLP, and the tail
    blocks = 2 + 1  # local fits of both MLPs (sensitivity) and the sequential refit of MLP 1
    assert len(built) == steps + blocks
    assert max(built) < whole * 0.6  # the largest step: embeddings, masks, rotary tables and layer 0 attention


def test_the_reported_fidelity_is_the_saved_models(exported, tmp_path):
    case = ("bert", "legacy")
    data = _data("bert")
    converted, report = convert(exported[case], calib=data, progress=False, sensitivity=False)
    prepared = normalise(exported[case])
    _, held_out = calibrate.split(prepared, data, 16)
    reference = first_output(make_session(exported[case]), held_out)
    saved = first_output(make_session(converted), held_out)
    assert report["fidelity"] == pytest.approx(calibrate.fidelity(reference, saved), abs=1e-5)
    assert report["fidelity"] < 1 - 1e-6  # the blocks changed the output, and the measure sees it

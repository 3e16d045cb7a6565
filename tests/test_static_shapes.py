"""A model exported with static input shapes (batch 1, fixed sequence), as many deployment exports are:
every pass over calibration or training data (conversion, fine-tuning, the compiler's activation
capture) runs it one row at a time, and a sample whose fixed axis has the wrong length is a one-line
error naming the input and both shapes (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
from models import FAMILIES, export, reference_inputs
from quweit.converter.cli import main as convert_main
from quweit.converter.finetune_cli import main as finetune_main
from quweit.custom_ops import read_blocks
from quweit.onnxio import input_specs, load_model, make_session, write_npz

SEQ, SAMPLES = 8, 12


@pytest.fixture(scope="module")
def static_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("static")
    path = export(FAMILIES["bert"], "dynamo", folder / "bert.onnx", batch=1, seq=SEQ, static=True)
    assert [s.dims for s in input_specs(load_model(path))] == [(1, SEQ), (1, SEQ)]  # really static
    data = reference_inputs(FAMILIES["bert"], SAMPLES, SEQ)
    data["attention_mask"][:, -2:] = 0  # some padding: only real tokens are calibration rows
    write_npz(folder / "calib.npz", data)
    return folder, path, data


def test_convert_runs_a_batch_1_model_row_by_row(static_bert, capsys):
    folder, path, data = static_bert
    out = folder / "bert.quweit.onnx"
    assert convert_main([str(path), "--calib", str(folder / "calib.npz"), "-o", str(out), "--quiet",
                         "--report", str(folder / "report.json")]) == 0
    assert "replaced 2/2 MLPs" in capsys.readouterr().out
    converted = load_model(out)
    assert len(read_blocks(converted)) == 2
    one = {k: v[:1] for k, v in data.items()}
    stock = make_session(converted, kernel=False).run(None, one)[0]
    kernel = make_session(converted, kernel=True).run(None, one)[0]
    assert stock.shape == (1, SEQ, 32) and np.array_equal(stock.view(np.int32), kernel.view(np.int32))


def test_a_sample_of_the_wrong_length_is_one_clear_line(static_bert, tmp_path, capsys):
    _, path, data = static_bert
    longer = {k: np.concatenate([v, v[:, :2]], axis=1) for k, v in data.items()}
    write_npz(tmp_path / "long.npz", longer)
    assert convert_main([str(path), "--calib", str(tmp_path / "long.npz"), "-o", str(tmp_path / "o.onnx"),
                         "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"quweit-convert: error: --calib {tmp_path / 'long.npz'}: input 'input_ids' is declared "
                   f"[1, {SEQ}], the given samples have shape [{SAMPLES}, {SEQ + 2}]: axis 1 must be {SEQ}, got "
                   f"{SEQ + 2} (the model was exported with a fixed size there)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.npz"]


def test_finetune_accumulates_over_single_row_runs(static_bert, capsys):
    folder, path, _ = static_bert
    student = folder / "bert.quweit.onnx"
    if not student.exists():
        assert convert_main([str(path), "--calib", str(folder / "calib.npz"), "-o", str(student), "--quiet",
                             "--no-sensitivity"]) == 0
    out = folder / "tuned.onnx"
    assert finetune_main([str(student), "--teacher", str(path), "--data", str(folder / "calib.npz"), "-o", str(out),
                          "--steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert not read_blocks(load_model(out))[0].equals(read_blocks(load_model(student))[0])


def test_compile_captures_block_inputs_row_by_row(static_bert):
    from quweit.hwbackend.compile import CompileOptions, block_inputs

    folder, path, data = static_bert
    student = folder / "bert.quweit.onnx"
    if not student.exists():
        assert convert_main([str(path), "--calib", str(folder / "calib.npz"), "-o", str(student), "--quiet",
                             "--no-sensitivity"]) == 0
    opts = CompileOptions(model=student, outdir=folder / "hw", inputs=folder / "calib.npz")
    rows = block_inputs(load_model(student), opts)
    assert [x.shape for x in rows] == [(int(data["attention_mask"].sum()), 32)] * 2

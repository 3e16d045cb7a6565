"""The paper experiments (`examples/vision_fashion_mnist.py`, `examples/chargpt_fortunes.py`): their data
readers, the dense trainer's DDP equivalence, the `--quick` pipeline end to end (export -> quweit-convert ->
quweit-finetune -> onnxruntime with the kernel), and the README section rendered from the result files.

The data come from Debian packages that the README's test command installs (or the example data cache).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import chargpt_fortunes
import paper_common as pc
import paper_data
import render_results
from quweit.converter.onnx_torch import OnnxGraphModule
from quweit.custom_ops import read_blocks


# ----- data ------------------------------------------------------------------------------------------
def test_idx_reader_reads_the_mnist_format(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes())
    np.testing.assert_array_equal(paper_data._idx(path), images)
    path.write_bytes(gzip.compress(b"\0\0\x0d\x01" + (3).to_bytes(4, "big") + b"\0" * 12))  # float32 IDX
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        paper_data._idx(path)


def test_fashion_mnist_is_installed_and_complete():
    data = paper_data.fashion_mnist()
    assert data["train_images"].shape == (60000, 28, 28) and data["test_images"].shape == (10000, 28, 28)
    assert sorted(np.unique(data["train_labels"])) == list(range(10))
    assert np.bincount(data["test_labels"]).tolist() == [1000] * 10


def test_fortunes_are_installed_clean_and_split_stably():
    entries = paper_data.fortune_entries()
    assert len(entries) > 10000 and sum(map(len, entries)) > 2_000_000
    text = "".join(entries)
    assert set(text) <= set(chargpt_fortunes.VOCAB) and "\x08" not in text
    splits = paper_data.split_entries(entries)
    again = paper_data.split_entries(list(reversed(entries)))
    assert {k: sorted(v) for k, v in splits.items()} == {k: sorted(v) for k, v in again.items()}
    assert not set(splits["test"]) & set(splits["train"])
    assert 0.03 < len(splits["test"]) / len(entries) < 0.07


def test_overstrike_and_foreign_characters_are_dropped(tmp_path, monkeypatch):
    where = tmp_path / "usr/share/games/fortunes"
    where.mkdir(parents=True)
    (where / "computers").write_text("B\x08Bold caf\u00e9\n%\nsecond\tone\n%\n")
    (where / "computers.dat").write_bytes(b"\0binary index")
    monkeypatch.setenv("QUWEIT_DATA", str(tmp_path))
    assert paper_data.fortune_entries() == ["Bold caf", "second    one"]


def test_char_windows_predict_the_next_character():
    ids = chargpt_fortunes.encode("hello world, hello fortunes\n")
    assert chargpt_fortunes.decode(ids) == "hello world, hello fortunes\n"
    windows = chargpt_fortunes.windows(ids, context=8, stride=4)
    np.testing.assert_array_equal(windows["input_ids"][:, 1:], windows[pc.LABELS][:, :-1])
    assert chargpt_fortunes.decode(windows["input_ids"][1]) == "o world,"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        chargpt_fortunes.encode("caf\u00e9".encode("utf-8").decode("latin-1"))


# ----- the pipeline's parts --------------------------------------------------------------------------
def test_exported_models_keep_every_parameter_apart(tmp_path):
    """An untrained model has many equal parameters (LayerNorm gains, zero biases); export and conversion
    must not tie them, or training the converted model trains them as one."""
    torch.manual_seed(0)
    model = chargpt_fortunes.CharGPT(context=16, dim=32, depth=2, heads=2)
    ids = torch.randint(0, len(chargpt_fortunes.VOCAB), (4, 16))
    path = pc.export_onnx(model, {"input_ids": ids[:2]}, tmp_path / "m.onnx", dynamic={"input_ids": {0: "b", 1: "s"}})
    pc.save_npz(tmp_path / "calib.npz", {"input_ids": ids.numpy()})
    report = pc.convert(path, tmp_path / "calib.npz", tmp_path / "q.onnx", pc.DEFAULT_BLOCK, tmp_path / "r.json")
    assert report["mlps_replaced"] == 2
    graph = OnnxGraphModule(onnx.load(tmp_path / "q.onnx"), train_dense=True)
    non_mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." not in n)
    assert sum(p.numel() for p in graph.dense.values()) == non_mlp


def test_dense_trainer_under_torchrun_matches_one_process(tmp_path):
    """`train_dense` with 2 DDP processes x 4 samples equals one process with the global batch of 8."""
    script = tmp_path / "train.py"
    script.write_text(f"""
import sys, numpy as np, torch
sys.path.insert(0, {str(EXAMPLES)!r})
import paper_common as pc, chargpt_fortunes as c
rank, world = pc.init_distributed(1)
torch.manual_seed(0)
model = c.CharGPT(context=8, dim=16, depth=1, heads=2)
ids = np.random.default_rng(0).integers(0, len(c.VOCAB), (64, 9))
pc.train_dense(model, {{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}}, pc.Budget(5, 8, 1e-2), seed=0,
               progress=False)
if rank == 0:
    torch.save(model.state_dict(), sys.argv[1])
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path / "ddp.pt")], check=True, env=env, timeout=300, cwd=tmp_path)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single.pt")], check=True, env=env, timeout=300)
    ddp, single = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("ddp", "single"))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)


# ----- the examples end to end -----------------------------------------------------------------------
def _quick(script: str, tmp_path: Path, launcher: list[str] | None = None) -> dict:
    results = tmp_path / "results.json"
    command = [*(launcher or [sys.executable]), str(EXAMPLES / script), "--quick", "--out", str(tmp_path / "work"),
               "--results", str(results)]
    subprocess.run(command, check=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    return json.loads(results.read_text())


def _check_pipeline(result: dict, work: Path) -> None:
    for key in ("metric_name", "higher_is_better", "dense_metric", "quweit_metric", "quweit_model", "command",
                "git_commit", "seeds", "wall_seconds", "machine", "mlps_replaced", "mult_share_removed",
                "params_before", "params_after"):
        assert key in result, key
    assert result["mlps_replaced"] == result["mlps_found"] == result["model"]["depth"]
    assert 0.5 < result["mult_share_removed"] < 1 and result["params_after"] < result["params_before"]
    for name in ("converted", "from_scratch"):
        blocks = read_blocks(onnx.load(work / f"{name}.onnx"))
        assert len(blocks) == result["model"]["depth"]
    # fine-tuning changed the converted model's blocks (it trained them)
    before = read_blocks(onnx.load(work / "dense.quweit.onnx"))[0]
    assert not before.equals(read_blocks(onnx.load(work / "converted.onnx"))[0])
    assert result["converted"]["finetuning"]["steps"] == 6 and result["from_scratch"]["training"]["steps"] == 12
    key = next(k for k in result["dense"] if k.startswith("test_"))
    assert result["quweit_metric"] == result[result["quweit_model"]][key]  # (chosen on validation: see callers)


def test_vision_quick_runs_the_whole_pipeline(tmp_path):
    result = _quick("vision_fashion_mnist.py", tmp_path)
    _check_pipeline(result, tmp_path / "work")
    for model in ("dense", "converted", "from_scratch"):
        assert 0.0 <= result[model]["test_accuracy"] <= 1.0
    assert result["higher_is_better"]
    chosen = max(("converted", "from_scratch"), key=lambda m: result[m]["validation_accuracy"])
    assert result["quweit_model"] == chosen and result["quweit_model_chosen_by"] == "validation_accuracy"


def test_chargpt_quick_runs_the_whole_pipeline_and_samples(tmp_path):
    result = _quick("chargpt_fortunes.py", tmp_path)
    _check_pipeline(result, tmp_path / "work")
    assert not result["higher_is_better"]
    chosen = min(("converted", "from_scratch"), key=lambda m: result[m]["validation_loss"])
    assert result["quweit_model"] == chosen and result["quweit_model_chosen_by"] == "validation_loss"
    for model in ("dense", "converted", "from_scratch"):
        assert 0 < result[model]["test_loss"] < np.log(len(chargpt_fortunes.VOCAB)) * 2
        sample = result[model]["sample"]
        assert len(sample) == result["samples"]["characters"] and set(sample) <= set(chargpt_fortunes.VOCAB)


def test_vision_quick_sweep_under_torchrun(tmp_path):
    results = tmp_path / "sweep.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(EXAMPLES / "vision_fashion_mnist.py"), "--quick", "--sweep", "--out", str(tmp_path / "work"),
                    "--results", str(results)], check=True, timeout=900, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(results.read_text())
    assert result["machine"]["world_size"] == 2 and result["command"].startswith("torchrun")
    assert [p["block"] for p in result["sweep"]] == list(pc.sweep_blocks(1024)[:2])
    assert [p["luts_per_block"] for p in result["sweep"]] == [[512] * 4, [512] * 4]
    assert all(0 <= p["test_accuracy"] <= 1 for p in result["sweep"])


# ----- the README --------------------------------------------------------------------------------------
def test_readme_section_is_rendered_from_the_result_files():
    text = (ROOT / "README.md").read_text()
    assert render_results.replace_section(text, render_results.section(plots=False)) == text
    for name in render_results.EXPERIMENTS:
        if (render_results.RESULTS / f"{name}_sweep.json").is_file():
            assert (render_results.RESULTS / f"{name}_sweep.png").is_file()


def test_rendered_table_says_whether_each_target_is_met():
    result = {"higher_is_better": True, "dense_metric": 0.90, "quweit_metric": 0.8905}
    assert render_results.target_met(result, ("points", 1.0))
    assert not render_results.target_met({**result, "quweit_metric": 0.8895}, ("points", 1.0))
    loss = {"higher_is_better": False, "dense_metric": 2.0, "quweit_metric": 2.09}
    assert render_results.target_met(loss, ("relative", 0.05))
    assert not render_results.target_met({**loss, "quweit_metric": 2.11}, ("relative", 0.05))
    assert render_results.gap(loss, "nats") == "-4.5%"

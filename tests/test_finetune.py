"""ONNX -> torch of converted models, parameter write-back, and end-to-end fine-tuning (`quweit-finetune`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from models import FAMILIES, export, reference_inputs
from onnx import helper, numpy_helper
from quweit.converter.finetune import FinetuneOptions, Teacher, finetune, schedule_factor, trim_padding
from quweit.converter.finetune_cli import main as finetune_main
from quweit.converter.fitting import fit_block
from quweit.converter.onnx_torch import OnnxGraphModule, write_back
from quweit.custom_ops import BlockConfig, attach_decomposition, evaluate, make_block_node, read_blocks
from quweit.onnxio import load_model, make_session, save_model, write_npz

HEAD_CONFIG = BlockConfig(lut_inputs=4, thresholds_per_feature=4, luts_per_output=2)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, kernel=False).run(None, feeds)


def _with_head(base: onnx.ModelProto, nodes, inits, output: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    hidden = base.graph.output[0].name
    for node in nodes:
        node.input[:] = [hidden if name == "H" else name for name in node.input]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, None, None]))
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny BERT (dynamo export) with two heads on its last hidden state: teacher `tanh(h W)`, student
    a WeightlessBlock fitted to it - a converted model in miniature, with the same frozen trunk."""
    folder = tmp_path_factory.mktemp("finetune")
    base = load_model(export(FAMILIES["bert"], "dynamo", folder / "bert.onnx"))
    data = reference_inputs(FAMILIES["bert"], batch=96, seq=6)
    hidden = _run(base, data)[0]
    w = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32) / 2
    teacher = _with_head(base, [helper.make_node("MatMul", ["H", "head.w"], ["hw"]),
                                helper.make_node("Tanh", ["hw"], ["y"])],
                         [numpy_helper.from_array(w, "head.w")], "y")
    flat = hidden[:8].reshape(-1, 32)  # fitted on a few samples: fine-tuning has something to add
    params = fit_block(flat, np.tanh(flat @ w), config=HEAD_CONFIG, progress=False)
    node, inits = make_block_node(params, "H", "y", prefix="head.", name="head_block")
    student = attach_decomposition(_with_head(base, [node], inits, "y"))
    paths = {"teacher": folder / "teacher.onnx", "student": folder / "student.onnx", "data": folder / "data.npz"}
    save_model(teacher, paths["teacher"])
    save_model(student, paths["student"])
    write_npz(paths["data"], data)
    return paths, teacher, student, data


@pytest.mark.parametrize("family, exporter", [("bert", "dynamo"), ("bert", "legacy"), ("gpt2", "dynamo"),
                                              ("llama", "dynamo"), ("t5", "dynamo"), ("opt", "dynamo")])
def test_graph_module_matches_onnxruntime(tmp_path, family, exporter):
    model = load_model(export(FAMILIES[family], exporter, tmp_path / "m.onnx"))
    feeds = reference_inputs(FAMILIES[family], batch=3, seq=7)
    got = OnnxGraphModule(model).eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    np.testing.assert_allclose(got.numpy(), _run(model, feeds)[0], rtol=0, atol=1e-5)


def test_onnx_torch_onnx_keeps_every_parameter(pair):
    _, _, student, _ = pair
    graph = OnnxGraphModule(student, candidates=3)
    again = write_back(student, graph.block_params())
    assert again.SerializeToString() == student.SerializeToString()
    assert read_blocks(again)[0].equals(read_blocks(student)[0])


def test_student_graph_block_is_exact_on_onnxruntime_inputs(pair):
    """The torch block, given exactly the input onnxruntime's block receives, gives exactly onnxruntime's
    block output (atol 0); inside the torch graph the block is fed the trunk's output and equals the
    reference on whatever it receives (the trunk's float ops may differ from onnxruntime's in the last bits)."""
    _, _, student, data = pair
    hidden, block_node = student.graph.node[-1].input[0], student.graph.node[-1]
    assert block_node.domain == "quweit"
    probe = onnx.ModelProto()
    probe.CopyFrom(student)
    probe.graph.output.append(helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    ort_y, ort_h = _run(probe, data)
    graph = OnnxGraphModule(student).eval()
    (block,) = graph.blocks.values()
    with torch.no_grad():
        torch_y = block(torch.from_numpy(ort_h)).numpy()
    assert torch_y.dtype == ort_y.dtype and np.array_equal(torch_y.view(np.int32), ort_y.view(np.int32))
    params = read_blocks(student)[0]
    assert np.array_equal(evaluate(params, ort_h).view(np.int32), ort_y.view(np.int32))

    seen = []
    block.register_forward_hook(lambda module, args, output: seen.append((args[0].detach().numpy(), output.detach().numpy())))
    with torch.no_grad():
        graph(**{k: torch.from_numpy(v) for k, v in data.items()})
    (torch_h, graph_y), = seen
    np.testing.assert_allclose(torch_h, ort_h, rtol=0, atol=1e-5)  # the same value, up to trunk rounding
    assert np.array_equal(graph_y.view(np.int32), evaluate(params, torch_h).view(np.int32))


def _heldout_loss(model, teacher, data) -> float:
    rows = slice(64, None)
    feeds = {k: v[rows] for k, v in data.items()}
    return float(np.mean((_run(model, feeds)[0] - _run(teacher, feeds)[0]) ** 2))


def test_distillation_lowers_heldout_loss_and_writes_back(pair):
    paths, teacher, student, data = pair
    train = {k: v[:64] for k, v in data.items()}
    trained, _losses = finetune(student, train, teacher=Teacher(paths["teacher"]),
                               options=FinetuneOptions(steps=40, batch_size=16, lr=0.05, value_lr=0.01),
                               progress=False)
    before, after = _heldout_loss(student, teacher, data), _heldout_loss(trained, teacher, data)
    assert after < 0.9 * before, (before, after)
    # only the block's initializers changed
    changed = {t.name for t, u in zip(trained.graph.initializer, student.graph.initializer) if t != u}
    assert changed and all(name.startswith("head.") for name in changed)
    assert [n for n in trained.graph.node] == [n for n in student.graph.node]


def test_task_loss_on_labels_trains(pair):
    _, _, student, data = pair
    labels = (data["input_ids"] % 8).astype(np.int64)
    labelled = {**data, "labels": labels}
    trained, losses = finetune(student, labelled, options=FinetuneOptions(steps=30, batch_size=32, lr=0.05,
                                                                           value_lr=0.01), progress=False)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not read_blocks(trained)[0].equals(read_blocks(student)[0])


def test_cli_resume_equals_uninterrupted_run(pair, tmp_path):
    paths, *_ = pair
    common = [str(paths["student"]), "--teacher", str(paths["teacher"]), "--data", str(paths["data"]),
              "--batch-size", "8", "--no-progress", "--checkpoint-every", "2"]
    assert finetune_main([*common, "-o", str(tmp_path / "full.onnx"), "--steps", "6"]) == 0
    assert finetune_main([*common, "-o", str(tmp_path / "part.onnx"), "--steps", "3"]) == 0
    assert finetune_main([*common, "-o", str(tmp_path / "resumed.onnx"), "--steps", "6",
                          "--resume", str(tmp_path / "part.onnx.ckpt")]) == 0
    full = load_model(tmp_path / "full.onnx")
    resumed = load_model(tmp_path / "resumed.onnx")
    assert read_blocks(full)[0].equals(read_blocks(resumed)[0])
    assert not read_blocks(full)[0].equals(read_blocks(load_model(paths["student"]))[0])


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_resume_never_unpickles_code(pair, tmp_path, capsys):
    """A crafted checkpoint whose unpickling would run code is refused (weights_only=True), exit 2."""
    paths, *_ = pair
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"step": 1, "losses": [], "seconds": 0.0, "model": {}, "optimizer": {},
                "generator": _RunsCodeWhenUnpickled(marker)}, evil)
    code = finetune_main([str(paths["student"]), "--teacher", str(paths["teacher"]), "--data", str(paths["data"]),
                          "-o", str(tmp_path / "out.onnx"), "--no-progress", "--resume", str(evil)])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert f"--resume {evil}: not a readable quweit-finetune checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_resume_of_another_models_checkpoint_is_bad_input(pair, tmp_path, capsys):
    paths, *_ = pair
    other = tmp_path / "other.ckpt"
    torch.save({"step": 1, "losses": [1.0], "seconds": 0.0, "model": {"nothing": torch.zeros(2)}, "optimizer": {},
                "generator": {}}, other)
    code = finetune_main([str(paths["student"]), "--teacher", str(paths["teacher"]), "--data", str(paths["data"]),
                          "-o", str(tmp_path / "out.onnx"), "--no-progress", "--resume", str(other)])
    assert code == 2 and "does not belong to this model" in capsys.readouterr().err


def test_cli_errors_name_the_problem(pair, tmp_path, capsys):
    paths, *_ = pair
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep")
    assert finetune_main([str(paths["student"]), "--data", str(paths["data"]), "--teacher",
                          str(paths["teacher"]), "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"keep"
    bad = tmp_path / "bad.npz"
    write_npz(bad, {"tokens": np.zeros((2, 3), np.int64)})
    assert finetune_main([str(paths["student"]), "--data", str(bad), "--teacher", str(paths["teacher"]),
                          "-o", str(tmp_path / "x.onnx")]) == 2
    assert "do not match the graph inputs" in capsys.readouterr().err
    assert finetune_main([str(paths["student"]), "--data", str(paths["data"]), "-o", str(tmp_path / "y.onnx")]) == 2
    assert "no teacher and no 'labels'" in capsys.readouterr().err
    assert finetune_main([str(paths["student"]), "--data", str(paths["data"]), "--steps", "0"]) == 2
    assert "--steps must be > 0" in capsys.readouterr().err


def test_torchrun_two_processes_match_one_process(pair, tmp_path):
    """DDP (gloo) with 2 x 8 samples against one process with the same global batch of 16.

    The exact difference: per-rank gradients are summed then averaged, so float sums are grouped
    differently (rounding differences of ~1e-7 relative); Adam makes them no larger over a few steps.
    """
    paths, *_ = pair
    args = [str(paths["student"]), "--teacher", str(paths["teacher"]), "--data", str(paths["data"]),
            "--batch-size", "16", "--steps", "6", "--no-progress", "--lr", "0.05", "--value-lr", "0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--standalone", "-m", "quweit.converter.finetune_cli", *args,
                    "-o", str(tmp_path / "ddp.onnx")], check=True, env=env, cwd=tmp_path, timeout=300)
    assert finetune_main([*args, "-o", str(tmp_path / "single.onnx")]) == 0
    ddp = torch.load(tmp_path / "ddp.onnx.ckpt", weights_only=True)["model"]
    single = torch.load(tmp_path / "single.onnx.ckpt", weights_only=True)["model"]
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    a, b = (read_blocks(load_model(tmp_path / f"{n}.onnx"))[0] for n in ("ddp", "single"))
    assert np.array_equal(a.table_bits(), b.table_bits()) and np.array_equal(a.mapping, b.mapping)
    assert np.abs(a.encoded_values.astype(np.int64) - b.encoded_values).max() <= 1


def test_train_dense_also_writes_back_the_other_weights(pair):
    paths, _teacher, student, data = pair
    train = {k: v[:64] for k, v in data.items()}
    trained, _ = finetune(student, train, teacher=Teacher(paths["teacher"]),
                          options=FinetuneOptions(steps=5, batch_size=16, train_dense=True, dense_lr=1e-3),
                          progress=False)
    changed = {t.name for t, u in zip(trained.graph.initializer, student.graph.initializer) if t != u}
    assert any(not name.startswith("head.") for name in changed)
    # the written model computes what the trained torch graph computes
    graph = OnnxGraphModule(trained).eval()
    got = graph(**{k: torch.from_numpy(v) for k, v in data.items()}).numpy()
    assert np.mean(np.isclose(got, _run(trained, data)[0], rtol=0, atol=1e-5)) > 0.99


def test_trim_padding_drops_only_columns_padded_in_every_row():
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], np.int64)
    feeds = {"attention_mask": mask, "input_ids": np.arange(10).reshape(2, 5), "lengths": np.array([2, 3])}
    trimmed = trim_padding(feeds, "attention_mask")
    assert trimmed["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert trimmed["input_ids"].tolist() == [[0, 1, 2], [5, 6, 7]]
    assert trimmed["lengths"] is feeds["lengths"]
    full = {"attention_mask": np.ones((2, 4), np.int64)}
    assert trim_padding(full, "attention_mask") is full


def test_trimmed_batch_gives_the_same_real_token_outputs(pair):
    """Padding positions influence no real token (attention masks them), so trimming is exact for them."""
    _, _, student, data = pair
    feeds = {k: v[:4].copy() for k, v in data.items()}
    feeds["attention_mask"][:, 4:] = 0
    feeds["attention_mask"][0, 3:] = 0
    graph = OnnxGraphModule(student).eval()
    full = graph(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    trimmed = trim_padding(feeds, "attention_mask")
    assert trimmed["input_ids"].shape[1] == 4
    short = graph(**{k: torch.from_numpy(v) for k, v in trimmed.items()}).numpy()
    real = feeds["attention_mask"][:, :4].astype(bool)
    np.testing.assert_allclose(short[real], full[:, :4][real], rtol=0, atol=1e-5)


def test_cosine_schedule_and_unknown_schedule():
    assert schedule_factor("constant", 0.7) == 1.0
    assert [schedule_factor("cosine", p) for p in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        schedule_factor("linear", 0.0)


def test_resume_with_cosine_schedule_equals_uninterrupted_run(pair, tmp_path, monkeypatch):
    """The schedule restarts where it stopped: a run resumed at step 3 of 6 ends as the whole run does
    (this fails if a resumed run took its checkpoint's decayed rates as base rates)."""
    import shutil

    import quweit.converter.finetune as finetune_module

    paths, _teacher, student, data = pair
    save = finetune_module._save_checkpoint

    def save_and_keep_step_3(path, step, *rest):
        save(path, step, *rest)
        if step == 3:
            shutil.copy(path, tmp_path / "step3.ckpt")

    monkeypatch.setattr(finetune_module, "_save_checkpoint", save_and_keep_step_3)
    options = FinetuneOptions(steps=6, batch_size=8, lr=0.05, value_lr=0.01, schedule="cosine", checkpoint_every=1)
    teacher = Teacher(paths["teacher"])
    full, _ = finetune(student, data, teacher=teacher, options=options, checkpoint=tmp_path / "full.ckpt",
                       progress=False)
    resumed, _ = finetune(student, data, teacher=teacher, options=options, checkpoint=tmp_path / "again.ckpt",
                          resume=tmp_path / "step3.ckpt", progress=False)
    assert read_blocks(full)[0].equals(read_blocks(resumed)[0])
    constant, _ = finetune(student, data, teacher=teacher, options=dataclasses.replace(options, schedule="constant"),
                           progress=False)
    assert not read_blocks(full)[0].equals(read_blocks(constant)[0])



class _Pickled:
    """Not a tensor, nor a plain value: loading it would mean unpickling code from the file."""


def test_resume_refuses_a_checkpoint_that_needs_unpickling(pair, tmp_path, capsys):
    paths, *_ = pair
    bad = tmp_path / "bad.ckpt"
    torch.save({"step": 1, "model": _Pickled()}, bad)
    assert finetune_main([str(paths["student"]), "--teacher", str(paths["teacher"]), "--data", str(paths["data"]),
                          "-o", str(tmp_path / "out.onnx"), "--resume", str(bad), "--no-progress"]) == 2
    assert f"--resume {bad}: not a readable quweit-finetune checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_cli_keeps_a_process_group_it_did_not_create(pair, tmp_path):
    """A training script under torchrun that calls quweit-finetune in process keeps its own process group."""
    import torch.distributed as dist

    paths, *_ = pair
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert finetune_main([str(paths["student"]), "--teacher", str(paths["teacher"]), "--data",
                              str(paths["data"]), "-o", str(tmp_path / "out.onnx"), "--steps", "2",
                              "--no-progress"]) == 0
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_task_loss_takes_class_labels_and_per_token_labels_and_ignores_minus_100():
    from quweit.converter.finetune import task_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 7, generator=generator)
    labels = torch.randint(0, 7, (4, 5), generator=generator)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(task_loss(logits, labels), per_token.mean())  # a char LM: [B, S, V] and [B, S]
    torch.testing.assert_close(task_loss(logits[:, 0], labels[:, 0]), per_token.reshape(4, 5)[:, 0].mean())  # [B]
    ignored = labels.clone()
    ignored[:, :2] = -100  # e.g. prompt or padding positions
    torch.testing.assert_close(task_loss(logits, ignored), per_token.reshape(4, 5)[:, 2:].mean())


def test_frozen_lookups_keep_embedding_tables_out_of_training():
    """`train_lookups=False`: an initializer only a Gather reads (an embedding table) stays a buffer; one that
    a Gather and another node read, and every other float weight, is trained."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("emb", (10, 4)), ("shared", (10, 4)), ("w", (4, 4)))]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("Gather", ["shared", "ids"], ["s"]),
         helper.make_node("Add", ["e", "s"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"]),
         helper.make_node("ReduceSum", ["shared"], ["total"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    frozen = OnnxGraphModule(model, train_dense=True, train_lookups=False)
    assert sorted(frozen.dense_names.values()) == ["shared", "w"]
    assert sorted(OnnxGraphModule(model, train_dense=True).dense_names.values()) == ["emb", "shared", "w"]

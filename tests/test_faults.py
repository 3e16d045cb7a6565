"""Faults: SIGINT and SIGTERM at random points of a conversion, a fine-tune and a compilation leave the
inputs untouched and no partial output; a fine-tune resumed from the checkpoint an interrupted run left
ends as the uninterrupted run does; a disk that fills while an output is written (a file-size limit,
RLIMIT_FSIZE: no root needed) gives exit 2, one line, and nothing behind.

The commands run in children forked by tests/fault_server.py (one server per command, imports paid
once); the signal times are drawn with a fixed seed over the measured length of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import hostile
import numpy as np
import pytest
from quweit.custom_ops import make_block_model, random_params, read_blocks
from quweit.onnxio import load_model, save_model

HERE = Path(__file__).resolve().parent
TRIALS = 3  # signal times per command and signal


class Server:
    def __init__(self, command: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fault_server.py"), command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=HERE)
        ready = self.proc.stdout.readline()
        assert "ready" in ready, f"fault server for {command} did not start"

    def run(self, argv, *, signum=None, after=0.0, after_file=None, fsize=None, cwd=None) -> dict:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "signal": signum, "after": after,
                                          "after_file": str(after_file) if after_file else None,
                                          "fsize": fsize, "cwd": str(cwd) if cwd else None}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module", params=["convert", "finetune", "compile"])
def server(request):
    served = Server(request.param)
    yield request.param, served
    served.close()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _inputs(command: str, folder: Path, steps: int = 30) -> tuple[list, Path, Path]:
    """(argv, output, output folder): a small model and data for `command`, written into `folder/in`."""
    inputs, out = folder / "in", folder / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    if command == "convert":
        model = inputs / "m.onnx"
        model.write_bytes(hostile.mlp_model().SerializeToString())
        np.savez(inputs / "c.npz", x=np.random.default_rng(1).standard_normal((16, 5, hostile.D)).astype(np.float32))
        return [model, "-o", out / "m.quweit.onnx", "--calib", inputs / "c.npz", "--quiet",
                "--report", out / "report.json"], out / "m.quweit.onnx", out
    params = random_params(np.random.default_rng(3), in_features=6, out_features=4, thresholds_per_feature=3,
                           lut_inputs=4, layer_sizes=(16, 8))
    model = save_model(make_block_model(params, ("batch", "sequence")), inputs / "b.onnx")
    if command == "finetune":
        rng = np.random.default_rng(2)
        np.savez(inputs / "d.npz", X=rng.standard_normal((64, 3, 6)).astype(np.float32),
                 labels=rng.integers(0, 4, size=(64, 3)))
        return [model, "--data", inputs / "d.npz", "-o", out / "t.onnx", "--steps", str(steps), "--checkpoint-every", "3",
                "--no-progress", "--batch-size", "8"], out / "t.onnx", out
    return [model, "-o", out / "hw", "--target", "verilog", "--vectors", "200"], out / "hw", out


def _no_partial_output(out: Path, allowed: set[str]) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if str(p.relative_to(out)) not in allowed]


def _check_complete(command: str, output: Path) -> None:
    if command == "compile":
        assert (output / "report.json").is_file()
    else:
        assert read_blocks(load_model(output))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_random_points_leaves_inputs_and_no_partial_output(server, signum, tmp_path):
    command, served = server
    rng = np.random.default_rng([signum, len(command)])
    full = _inputs(command, tmp_path / "full")
    timing = served.run(full[0])
    assert timing["status"] == 0, timing["stderr"][-2000:]
    interrupted = 0
    for trial in range(TRIALS):
        argv, output, out = _inputs(command, tmp_path / f"t{trial}")
        before = _digests(tmp_path / f"t{trial}" / "in")
        after = float(rng.uniform(0.05, 0.9)) * timing["seconds"]
        result = served.run(argv, signum=signum, after=after)
        assert _digests(tmp_path / f"t{trial}" / "in") == before, "an input changed"
        assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
        if result["status"] == 0:  # finished before the signal: complete outputs
            _check_complete(command, output)
            continue
        interrupted += 1
        assert result["status"] == 128 + signum, (after, result)
        assert result["stderr"].strip().splitlines()[-1].startswith(f"quweit-{command}: ")
        allowed = {"t.onnx.ckpt"} if command == "finetune" else set()  # the checkpoint is the resumable state
        if output.exists():  # the signal landed while the outputs were moved into place: they are complete
            _check_complete(command, output)
            allowed |= {str(p.relative_to(out)) for p in out.rglob("*")} if command == "compile" else {output.name}
            allowed |= {"report.json"} if command == "convert" else set()
        assert not _no_partial_output(out, allowed), _no_partial_output(out, allowed)
    assert interrupted, "no trial was interrupted: the signal times missed the runs"


def test_resumed_fine_tune_continues_from_the_checkpoint_an_interrupted_run_left(tmp_path):
    steps = 2000  # the fused training ops take a few ms per step here: the run must outlast the signal's delay
    served = Server("finetune")
    try:
        argv, output, out = _inputs("finetune", tmp_path / "full", steps=steps)
        timing = served.run(argv)
        assert timing["status"] == 0, timing["stderr"][-2000:]
        full = read_blocks(load_model(output))[0]
        argv, output, out = _inputs("finetune", tmp_path / "cut", steps=steps)
        checkpoint = out / "t.onnx.ckpt"
        # once the first checkpoint (step 3) is written, within the next half second
        after = float(np.random.default_rng(7).uniform(0.0, 0.5))
        result = served.run(argv, signum=signal.SIGTERM, after=after, after_file=checkpoint)
        assert result["status"] == 128 + signal.SIGTERM, result
        assert not output.exists() and checkpoint.exists()
        from quweit.converter.finetune import load_checkpoint

        step = load_checkpoint(checkpoint)["step"]
        assert 0 < step < steps
        resumed = served.run([*argv, "--resume", checkpoint, "--checkpoint", out / "again.ckpt"])
        assert resumed["status"] == 0, resumed["stderr"][-2000:]
        assert read_blocks(load_model(output))[0].equals(full)
    finally:
        served.close()


def test_full_disk_while_writing_exits_2_and_leaves_nothing(server, tmp_path):
    command, served = server
    argv, output, out = _inputs(command, tmp_path)
    before = _digests(tmp_path / "in")
    result = served.run(argv, fsize=2048)
    assert result["status"] == 2, result["stderr"][-3000:]
    lines = result["stderr"].strip().splitlines()
    assert lines[-1].startswith(f"quweit-{command}: error: ") and "Traceback" not in result["stderr"]
    assert "File too large" in lines[-1] or "file size limit" in lines[-1], lines[-1]
    assert _digests(tmp_path / "in") == before
    assert not output.exists() and not _no_partial_output(out, set()), _no_partial_output(out, set())

"""The one error path of the three commands (quweit.command): hostile and broken files exit 2 with one
line naming what is wrong, nothing written and the inputs untouched; an internal error exits 1 with a
hint to report it; a traceback appears only with --debug."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import hashlib
from pathlib import Path

import hostile
import numpy as np
import pytest
from quweit.command import describe_os_error, one_line
from quweit.onnxio import Terminated


def _convert(argv):
    from quweit.converter.cli import main

    return main(argv)


def _finetune(argv):
    from quweit.converter.finetune_cli import main

    return main(argv)


def _compile(argv):
    from quweit.hwbackend.cli import main

    return main(argv)


COMMANDS = {"quweit-convert": _convert, "quweit-finetune": _finetune, "quweit-compile": _compile}


def _argv(prog: str, model: Path, folder: Path) -> list[str]:
    out = folder / "out"
    if prog == "quweit-convert":
        return [str(model), "-o", str(out / "m.quweit.onnx"), "--quiet", "--no-sensitivity"]
    if prog == "quweit-finetune":
        data = folder / "data.npz"
        if not data.exists():
            np.savez(data, x=np.zeros((4, 3, hostile.D), np.float32))
        return [str(model), "--data", str(data), "-o", str(out / "m.tuned.onnx"), "--no-progress", "--steps", "1"]
    return [str(model), "-o", str(out / "hw"), "--target", "verilog"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(hostile.MAKERS))
@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_hostile_file_exits_2_with_one_line(prog, case, tmp_path, capsys):
    model = hostile.MAKERS[case](tmp_path)
    (tmp_path / "out").mkdir()
    argv = _argv(prog, model, tmp_path)
    before = _snapshot(tmp_path)
    code = COMMANDS[prog](argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before  # inputs untouched, no output, no temporary file


@pytest.mark.parametrize("case, needle", [
    ("external_escapes", "secret.bin"), ("external_absolute", "abs.bin"), ("external_truncated", "short.bin"),
    ("external_missing", "nowhere.bin"), ("huge_dims", "w1"), ("negative_dims", "w1"), ("future_opset", "99"),
    ("truncated", "truncated.onnx"), ("missing", "absent.onnx"), ("cycle", "cycle"),
])
@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_error_names_what_is_wrong(prog, case, needle, tmp_path, capsys):
    model = hostile.MAKERS[case](tmp_path)
    assert COMMANDS[prog](_argv(prog, model, tmp_path)) == 2
    assert needle in capsys.readouterr().err


INTERNAL = {  # a function each command calls early, made to fail as a bug would
    "quweit-convert": ("quweit.converter.cli", "_config"),
    "quweit-finetune": ("quweit.converter.finetune_cli", "_positive"),
    "quweit-compile": ("quweit.hwbackend.compile", "compile_model"),
}


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_internal_error_exits_1_with_a_hint_and_traceback_only_with_debug(prog, tmp_path, capsys, monkeypatch):
    import importlib

    module, name = INTERNAL[prog]

    def broken(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    argv = _argv(prog, hostile.garbage(tmp_path), tmp_path)
    assert COMMANDS[prog](argv) == 1
    err = capsys.readouterr().err
    assert f"{prog}: internal error: KeyError: 'no such key'" in err and "please report it" in err
    assert "Traceback" not in err
    assert COMMANDS[prog]([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal error: KeyError" in err


def test_debug_shows_the_traceback_of_bad_input_too(tmp_path, capsys):
    argv = _argv("quweit-convert", hostile.garbage(tmp_path), tmp_path)
    assert _convert([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("quweit-convert: error:")


def test_os_errors_name_the_path_and_the_reason():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out.onnx")
    assert describe_os_error(full) == "'/data/out.onnx': No space left on device (the disk is full; nothing was written)"
    denied = PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b")
    assert describe_os_error(denied) == "'/a' -> '/b': Permission denied"
    assert one_line("first\n  second\tthird") == "first second third"
    assert len(one_line("x" * 10_000)) <= 600


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_output_folder_that_cannot_exist_exits_2(prog, tmp_path, capsys):
    """The output's folder is a regular file: no permission trick needed (tests may run as root)."""
    from quweit.custom_ops import make_block_model, random_params

    if prog == "quweit-convert":
        model = hostile.mlp_model()
    else:  # a converted model: something to train or compile
        params = random_params(np.random.default_rng(0), in_features=hostile.D, out_features=hostile.D,
                               thresholds_per_feature=2, lut_inputs=3)
        model = make_block_model(params)
        np.savez(tmp_path / "data.npz", X=np.random.default_rng(1).standard_normal((4, 3, hostile.D)).astype(np.float32),
                 labels=np.zeros((4, 3), np.int64))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    blocker = tmp_path / "out"
    blocker.write_text("a file where a folder should be")
    code = COMMANDS[prog](_argv(prog, path, tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"{prog}: error: ") and "out" in err and "Traceback" not in err


def test_commands_let_idle_openmp_threads_sleep_before_torch_is_loaded():
    """Every command sets OMP_WAIT_POLICY=PASSIVE (a user's own choice stays) before its body runs, and no
    command module imports torch earlier, so libgomp sees it."""
    code = ("import os, sys, argparse\n"
            "import quweit.converter.cli, quweit.converter.finetune_cli, quweit.hwbackend.cli\n"
            "from quweit.command import run_command\n"
            "assert 'torch' not in sys.modules, 'a command module imports torch at import time'\n"
            "run_command('x', argparse.ArgumentParser(), lambda a: print(os.environ['OMP_WAIT_POLICY']) or 0, [])\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ACTIVE"


@pytest.fixture
def terminal_signals():
    """SIGINT raises KeyboardInterrupt, as in a command started from a terminal (a shell starts background
    jobs, such as a CI run, with SIGINT ignored, and Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_interruption_landing_in_a_callback_is_sent_again_not_printed_and_dropped(exc, status, capsys,
                                                                                  terminal_signals):
    """An interruption raised in a weakref callback (where importlib's module locks put one) cannot
    propagate: Python prints "Exception ignored ... Traceback" and runs on. The command must still stop
    with the signal's status and one line."""
    import argparse
    import time
    import weakref

    from quweit.command import run_command

    def body(args) -> int:
        class Token:
            pass

        def callback(_):
            raise exc()

        token = Token()
        ref = weakref.ref(token, callback)  # noqa: F841  (kept alive so that the callback runs)
        del token  # the callback runs here; its exception is "unraisable"
        time.sleep(5)  # where the signal sent again must land
        return 0

    started = time.monotonic()
    code = run_command("quweit-test", argparse.ArgumentParser(), body, [])
    err = capsys.readouterr().err
    assert code == status, err
    assert time.monotonic() - started < 3
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().startswith("quweit-test: ") and len(err.strip().splitlines()) == 1, err


def test_atomic_writer_interrupted_anywhere_leaves_no_temporary_folder(tmp_path, monkeypatch, terminal_signals):
    """Ctrl-C right after the temporary folder is made, or while it is removed, leaves nothing behind
    (the CI once found `.m.quweit.onnx.<random>.tmp` left by a signal in that window)."""
    import shutil
    import tempfile

    from quweit.onnxio import write_text
    from quweit.onnxio import save as save_module

    made = tempfile.mkdtemp

    def mkdtemp_then_interrupted(*a, **k):
        path = made(*a, **k)
        os.kill(os.getpid(), signal.SIGINT)  # lands as soon as Python may raise
        return path

    monkeypatch.setattr(save_module.tempfile, "mkdtemp", mkdtemp_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text(tmp_path / "a.txt", "x")
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    monkeypatch.setattr(save_module.tempfile, "mkdtemp", made)

    removed = shutil.rmtree

    def interrupted_while_removing(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        removed(path, *a, **k)

    monkeypatch.setattr(save_module.shutil, "rmtree", interrupted_while_removing)
    with pytest.raises(KeyboardInterrupt):
        write_text(tmp_path / "b.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"]

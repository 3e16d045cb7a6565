"""The fuzzer's targets, run in long-lived worker processes (`python bench/fuzz_targets.py KIND`).

A worker reads one job per line (JSON) on stdin and writes one result line per target to a file
descriptor it is given, so that whatever the libraries print (onnxruntime logs, sanitizer reports) goes to the
worker's stdout/stderr, which the driver keeps in a log. Kinds:

- `py`: `quweit-convert` and `quweit-compile` called in-process (`main(argv)`), their stdout/stderr
  captured; an accepted conversion is checked against the reference (each block's outputs in
  onnxruntime equal `evaluate` on the inputs it receives), an accepted compilation is verified by
  simulating its Verilog against the reference (`--verify`).
- `runtime`: the onnxruntime kernel (this process is started with the sanitized build preloaded) and
  the op's decomposition in stock onnxruntime, on the case's inputs; when both accept a model their
  outputs must be identical, and a single-block model's must equal `evaluate`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

TRACEBACK = "Traceback (most recent call last)"


def _in_process(main, argv: list[str]) -> tuple[int | None, str]:
    """Exit code and stderr of `main(argv)`; an exception escaping it is reported as a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001  (the fuzzer's finding: the command let an exception escape)
            traceback.print_exc(file=err)
            code = None
    return code, err.getvalue()


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def convert_argv(job: dict, out: Path) -> list[str]:
    return [job["model"], "-o", str(out / "m.quweit.onnx"), "--calib", job["calib"], "--quiet", "--no-sensitivity",
            "--local", "--layers", "0"]


def compile_argv(job: dict, out: Path) -> list[str]:
    argv = [job["model"], "-o", str(out / "hw"), "--target", "verilog", "--vectors", "16", "--inputs", job["calib"]]
    return argv + (["--verify"] if job.get("verify") else [])


def target_convert(job: dict) -> dict:
    from quweit.converter.cli import main

    out = Path(job["out"]["convert"])
    code, err = _in_process(main, convert_argv(job, out))
    result = {"code": code, "traceback": TRACEBACK in err, "message": _first_line(err)}
    if code == 0:
        result["mismatch"] = _check_converted(out / "m.quweit.onnx", job)
    return result


def _check_converted(path: Path, job: dict) -> str | None:
    """Each block of the written model, run by onnxruntime (decomposition), equals `evaluate` on the
    inputs it receives there; None when so, else what differs."""
    from quweit.custom_ops import block_nodes, evaluate, read_blocks
    from quweit.onnxio import capture, load_arrays, load_model, runs

    try:
        model = load_model(path)
        blocks = read_blocks(model)
    except Exception as err:  # noqa: BLE001  (the converter wrote a model quweit cannot read back)
        return f"written model unreadable: {_first_line(str(err))}"
    nodes = block_nodes(model)
    arrays = load_arrays(job["calib"])
    names = [n for node in nodes for n in (node.input[0], node.output[0])]
    values = capture(model, runs(model, arrays, 2), list(dict.fromkeys(names)), kernel=False)
    for params, node in zip(blocks, nodes):
        want = evaluate(params, values[node.input[0]])
        if not _same_bits(values[node.output[0]], want):
            return f"block {node.name}: onnxruntime differs from the reference"
    return None


def target_compile(job: dict) -> dict:
    from quweit.hwbackend.cli import main

    out = Path(job["out"]["compile"])
    code, err = _in_process(main, compile_argv(job, out))
    result = {"code": code, "traceback": TRACEBACK in err, "message": _first_line(err)}
    if code == 1 and "verification FAILED" in err:
        result.update(code=0, mismatch=_first_line(err.split("verification FAILED")[0]) or "verification failed")
    return result


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return np.array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))
    return np.array_equal(a, b)


def _feeds(job: dict) -> dict | None:
    """Two samples of the case's inputs (X of a wrong width when the mutation asks), or None."""
    import onnx
    from quweit.onnxio import check_inputs, load_arrays, runs

    arrays = load_arrays(job["calib"])
    if job.get("width") is not None:
        x = arrays["X"]
        return {"X": np.resize(x[:2], (*x[:2].shape[:-1], job["width"])).astype(np.float32)}
    try:
        model = onnx.load(job["model"], load_external_data=False)
        check_inputs(model, arrays)
        return runs(model, arrays, 2)[0].feeds
    except Exception:  # noqa: BLE001  (a mutated model whose inputs the data no longer fits: sessions only)
        return None


def target_runtime(job: dict) -> dict:
    """Kernel (sanitized build) then decomposition (stock onnxruntime); compared when both run."""
    from quweit.onnxio import make_session

    feeds = _feeds(job)
    outcomes = {}
    for name, kernel in (("kernel", True), ("decomposition", False)):
        try:
            session = make_session(job["model"], kernel=kernel, threads=1)
            outcomes[name] = session.run(None, feeds) if feeds is not None else "created"
        except Exception as err:  # noqa: BLE001  (onnxruntime refuses the model or the run: fine)
            outcomes[name] = f"error: {_first_line(str(err))}"
    # for the table: 0 when the kernel ran the model (or built a session when there is nothing to feed), 2 when
    # it refused it; the decomposition's outcome is in the message
    kernel_ran = not str(_summary(outcomes["kernel"])).startswith("error")
    result = {"code": 0 if kernel_ran else 2, "traceback": False,
              "message": f"kernel: {_summary(outcomes['kernel'])}; decomposition: {_summary(outcomes['decomposition'])}"}
    kernel_out, decomposition_out = outcomes["kernel"], outcomes["decomposition"]
    # (only one of them running is no finding: a mutated decomposition function breaks stock onnxruntime
    # alone, a parameter the kernel refuses may still be computable by standard ops - spec section 5.1)
    if isinstance(kernel_out, list) and isinstance(decomposition_out, list) and _decomposition_intact(job["model"]):
        if not all(_same_bits(a, b) for a, b in zip(kernel_out, decomposition_out)):
            result["mismatch"] = "kernel and decomposition outputs differ"
        else:
            result["mismatch"] = _against_reference(job, feeds, kernel_out)
    return result


def _decomposition_intact(path: str) -> bool:
    """Whether the model's WeightlessBlock function is quweit's own (a mutation may have changed it, and
    then the two paths may differ by design)."""
    import onnx
    from quweit.custom_ops import DOMAIN, OP_TYPE, make_function

    try:
        model = onnx.load(path, load_external_data=False)
        opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
        (function,) = [f for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE]
        return function.SerializeToString() == make_function(opset).SerializeToString()
    except Exception:  # noqa: BLE001  (no such function, several, an odd opset: not quweit's decomposition)
        return False


def _summary(outcome) -> str:
    return "ran" if isinstance(outcome, list) else outcome


def _against_reference(job: dict, feeds: dict, outputs: list) -> str | None:
    """A model that is one block: its output must equal `evaluate` (when quweit can read the block)."""
    from quweit.custom_ops import evaluate, read_blocks
    from quweit.onnxio import load_model

    if job["seed_kind"] != "block":
        return None
    try:
        (params,) = read_blocks(load_model(job["model"]))
    except Exception:  # noqa: BLE001  (the loader's checks go beyond onnxruntime's: nothing to compare)
        return None
    return None if _same_bits(outputs[0], evaluate(params, feeds["X"])) else "kernel differs from the reference"


TARGETS = {"convert": target_convert, "compile": target_compile, "runtime": target_runtime}


def _cpu_seconds() -> float:
    """CPU time of this process and of the programs it waited for (simulators, compilers)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def serve(kind: str, fd: int) -> None:
    results = os.fdopen(fd, "w", buffering=1)
    if kind == "py":  # import once, before the first case's clock starts
        import quweit.converter.cli  # noqa: F401
        import quweit.hwbackend.cli  # noqa: F401
    else:
        import quweit.onnxio  # noqa: F401
    results.write(json.dumps({"ready": kind}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        for target in job["targets"]:
            results.write(json.dumps({"start": target}) + "\n")
            started, cpu = time.perf_counter(), _cpu_seconds()
            try:
                outcome = TARGETS[target](job)
            except Exception:  # noqa: BLE001  (a bug in the harness or in a check: reported, not hidden)
                outcome = {"code": None, "traceback": True, "message": "harness: " + traceback.format_exc()[-300:]}
            outcome["seconds"] = round(time.perf_counter() - started, 3)
            outcome["cpu"] = round(_cpu_seconds() - cpu, 3)
            results.write(json.dumps({"target": target, **outcome}) + "\n")
        results.write(json.dumps({"done": True}) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    serve(sys.argv[1], int(sys.argv[2]))

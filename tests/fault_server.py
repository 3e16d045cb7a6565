"""A fork server for the fault tests (test_faults.py): imports a command once, then runs it in a forked
child per request, optionally with a signal sent after a delay or a file-size limit (a full disk).

    python fault_server.py convert|finetune|compile     # then one JSON request per line on stdin

Request: {"argv": [...], "signal": 2|15|null, "after": seconds, "after_file": path|null, "fsize": bytes|null,
"cwd": path}: the signal goes `after` seconds after the start, or after `after_file` appears.
Reply (one line): {"status": exit code or -signal, "stderr": text, "seconds": wall time}.
A fresh interpreter serves the requests (never the test process itself: forking a process that has run
threads, pytest's or torch's, is unsafe), so each run costs the command's work, not its imports.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time

COMMANDS = {"convert": "quweit.converter.cli", "finetune": "quweit.converter.finetune_cli",
            "compile": "quweit.hwbackend.cli"}
PRELOAD = {"convert": ["quweit.converter.convert", "quweit.converter.fitting"],
           "finetune": ["torch.distributed", "quweit.converter.finetune"],
           "compile": ["tvm", "quweit.hwbackend.compile", "quweit.hwbackend.codegen", "quweit.hwbackend.frontend"]}


def run(main, request: dict) -> dict:
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: the command, its stderr to the file, an optional size limit
            try:
                os.dup2(err.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                os.chdir(request.get("cwd") or ".")
                if request.get("fsize") is not None:
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit then fail (EFBIG)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
                code = main(request["argv"])
            except BaseException:  # noqa: BLE001  (whatever escapes is the finding: show it)
                import traceback

                traceback.print_exc()
                code = 99
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 98)
        if request.get("signal"):
            if request.get("after_file"):  # first wait for the run to reach a point (a file it writes)
                deadline = time.monotonic() + 300
                while not os.path.exists(request["after_file"]) and time.monotonic() < deadline:
                    if os.waitpid(pid, os.WNOHANG) != (0, 0):
                        raise RuntimeError(f"the run ended before {request['after_file']} appeared")
                    time.sleep(0.01)
            time.sleep(request["after"])
            try:
                os.kill(pid, request["signal"])
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return {"status": code, "stderr": text, "seconds": seconds}


def serve(command: str) -> None:
    import importlib

    # The runs get the signal dispositions of a command started from a terminal, whatever this server
    # inherited: a shell starts background jobs with SIGINT ignored (kept across exec), and Python then
    # installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    main = importlib.import_module(COMMANDS[command]).main
    for module in PRELOAD[command]:  # what the command imports on first use, paid once here
        importlib.import_module(module)
    if command == "finetune":
        # torch's first steps are slow (lazy initialisation): take them here, on one thread, so that no
        # thread pool exists when the server forks
        import torch

        torch.set_num_threads(1)
        x = torch.randn(8, 4, requires_grad=True)
        torch.nn.functional.cross_entropy(torch.einsum("ij,jk->ik", x, torch.randn(4, 3)), torch.zeros(8).long()).backward()
    print(json.dumps({"ready": command}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(main, json.loads(line))), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])

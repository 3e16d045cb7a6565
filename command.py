"""The one error path of every quweit command (`quweit-convert`, `quweit-finetune`, `quweit-compile`).

`run_command` runs a command's body and turns whatever escapes it into an exit status and at most one
line on stderr:

- an `InputError` (the file, node, parameter or value is wrong; a `WeightlessBlockError` is one too)
  -> its exit code (2 bad input, 3 no MLP);
- an `OSError` (unreadable or unwritable path, full disk, file too large, no permission) -> 2, naming the
  path and the reason;
- Ctrl-C or SIGTERM -> 130 / 143: SIGTERM unwinds like Ctrl-C (`quweit.onnxio.signals`), so the
  bodies clean up on the way out (the one atomic writer removes its temporary files) and an interrupted
  command leaves its inputs untouched and no partial output;
- anything else is a bug in quweit -> 1, with a short message and a hint to report it.

A traceback is printed only with `--debug`, which every command accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, InputError
from .onnxio.signals import EXIT_TERMINATED, Terminated, interruptions_not_lost, sigterm_unwinds

EXIT_INTERRUPTED = 128 + signal.SIGINT

#: Where a user reports an internal error.
REPORT_HINT = ("this is a bug in quweit: please report it with the command line and the output of the same "
               "command run again with --debug")
#: Longest message printed (a hostile file can make a library's error text arbitrarily long).
MAX_MESSAGE = 600


def one_line(text: object) -> str:
    """`text` as a single line of bounded length (error messages of libraries may span many lines)."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def describe_os_error(err: OSError) -> str:
    """`'<path>': <reason>` for an OSError, naming both paths of a failed rename or link."""
    reason = err.strerror or errno.errorcode.get(err.errno or 0, "") or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full; nothing was written)"
    elif err.errno == errno.EFBIG:
        reason += " (the file size limit was reached; nothing was written)"
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = " -> ".join(f"'{os.fsdecode(p)}'" for p in paths)
    return f"{where}: {reason}" if where else reason


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """An `InputError` raised inside names `path` (as a prefix) unless its message already does: errors
    found deep in a stage (an MLP, a node) then still say which file they are about."""
    try:
        yield
    except InputError as err:
        if err.args and isinstance(err.args[0], str) and os.fspath(path) not in err.args[0]:
            err.args = (f"{os.fspath(path)}: {err.args[0]}", *err.args[1:])
        raise


def add_debug_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (for bug reports)")
    return parser


def idle_threads_sleep() -> None:
    """Let torch's idle OpenMP threads sleep instead of spinning (unless the user chose a policy).

    A command's torch work alternates with Python and onnxruntime work; with GNU OpenMP's default, idle
    threads spin, and on a machine whose cores are busy with anything else a spinning thread holds the
    core its sibling needs: one MiniLM distillation step measured 15 s on 2 threads at load 8 with
    spinning, 1.4 s without (0.3 s quiet). libgomp reads the variable once, when torch is first imported;
    no command imports torch before its body runs."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_command(prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
                argv: list[str] | None = None) -> int:
    """Parse `argv`, run `body(args)` and map its outcome to an exit status (see the module docstring)."""
    idle_threads_sleep()
    add_debug_option(parser)
    args = parser.parse_args(argv)  # usage errors: argparse prints usage and one line, exit 2
    debug = args.debug

    def fail(status: int, message: str) -> int:
        if debug:
            traceback.print_exc()
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
        return status

    try:
        with sigterm_unwinds(), interruptions_not_lost():
            return body(args)
    except Terminated:  # (an output committed just before the signal landed stays: it is complete)
        return fail(EXIT_TERMINATED, "terminated (SIGTERM); inputs untouched, no partial output left")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted; inputs untouched, no partial output left")
    except InputError as err:
        return fail(err.exit_code, f"error: {one_line(err)}")
    except OSError as err:
        return fail(EXIT_BAD_INPUT, f"error: {one_line(describe_os_error(err))}")
    except MemoryError:
        return fail(EXIT_BAD_INPUT, "error: out of memory (the input is too large for this machine)")
    except Exception as err:  # noqa: BLE001  (the one place where an unexpected failure becomes exit 1)
        return fail(EXIT_INTERNAL, f"internal error: {type(err).__name__}: {one_line(err)}\n{prog}: {REPORT_HINT}")

"""The root of every expected failure in quweit, and the exit codes the commands map failures to.

An `InputError` is something the user can fix: a bad or hostile file, an unsupported model, a wrong
option, a full disk. Every command prints it as one line and exits with its `exit_code`; anything else
that escapes a command is a bug in quweit (exit 1, see `quweit.command`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_NO_MLP = 3


class InputError(Exception):
    """Bad usage, bad input or a bad environment; the message names the file, node, parameter and value."""

    exit_code = EXIT_BAD_INPUT

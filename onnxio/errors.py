"""The I/O layer's one error: a file or an array that cannot be used, named in one line (exit code 2)."""

from __future__ import annotations

from quweit.errors import EXIT_BAD_INPUT, InputError

__all__ = ["EXIT_BAD_INPUT", "BadInputError"]


class BadInputError(InputError, ValueError):
    """Unreadable, truncated, hostile or mismatching input; the message names the file, tensor or input
    and the value that is wrong. Every command maps it to exit code 2 without a traceback."""

    exit_code = EXIT_BAD_INPUT

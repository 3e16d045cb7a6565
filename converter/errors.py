"""Errors of the converter and the exit codes the CLI maps them to (0 converted, 2 bad input, 3 no MLP).

`BadInputError` is the I/O layer's (`quweit.onnxio`): one class for bad input in every stage.
"""

from __future__ import annotations

from quweit.onnxio.errors import BadInputError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NO_MLP = 3

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_MLP", "EXIT_OK", "BadInputError", "ConvertError", "NoMlpError"]


class ConvertError(Exception):
    """A conversion that cannot go on (bad usage: exit 2); `NoMlpError` has its own code."""

    exit_code = EXIT_BAD_INPUT


class NoMlpError(ConvertError):
    """A valid model in which no MLP was found; `rejected` says why each candidate was turned down."""

    exit_code = EXIT_NO_MLP

    def __init__(self, message: str, rejected: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected or []

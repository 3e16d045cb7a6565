"""Errors of the converter and the exit codes the CLI maps them to (0 converted, 2 bad input, 3 no MLP).

`BadInputError` is the I/O layer's (`quweit.onnxio`): one class for bad input in every stage. Every
class here is a `quweit.errors.InputError`, which `quweit.command` turns into one line and its exit code.
"""

from __future__ import annotations

from quweit.errors import EXIT_BAD_INPUT, EXIT_NO_MLP, EXIT_OK, InputError
from quweit.onnxio.errors import BadInputError

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_MLP", "EXIT_OK", "BadInputError", "ConvertError", "FinetuneError", "NoMlpError"]


class ConvertError(InputError):
    """A conversion that cannot go on (bad usage: exit 2); `NoMlpError` has its own code."""

    exit_code = EXIT_BAD_INPUT


class FinetuneError(InputError, ValueError):
    """Bad input to fine-tuning: options, data, a model it cannot train, a checkpoint it cannot resume."""


class NoMlpError(ConvertError):
    """A valid model in which no MLP was found; `rejected` says why each candidate was turned down."""

    exit_code = EXIT_NO_MLP

    def __init__(self, message: str, rejected: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected or []

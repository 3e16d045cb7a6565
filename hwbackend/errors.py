"""The hardware backend's one error type: bad input to `quweit-compile` (exit code 2)."""

from __future__ import annotations

from quweit.errors import InputError


class HwBackendError(InputError):
    """The model, an option or the tool environment cannot be compiled; the message says which and why."""

    exit_code = 2

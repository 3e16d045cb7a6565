"""The one error type of the op contract, so every caller can catch bad parameters the same way."""

from __future__ import annotations

from quweit.errors import InputError


class WeightlessBlockError(InputError, ValueError):
    """A `WeightlessBlock` parameter or input violates the specification.

    The message always names the node (when known), the parameter and the offending value, as the
    specification (docs/weightless_block.md, section 5) requires of every implementation.
    """

    def __init__(self, parameter: str, problem: str, *, node: str | None = None) -> None:
        self.parameter = parameter
        self.problem = problem
        self.node = node
        where = f"WeightlessBlock node '{node}'" if node else "WeightlessBlock"
        super().__init__(f"{where}: parameter '{parameter}': {problem}")

    def with_node(self, node: str) -> "WeightlessBlockError":
        """Return the same error attributed to a graph node (used when the caller learns the name)."""
        return WeightlessBlockError(self.parameter, self.problem, node=node)

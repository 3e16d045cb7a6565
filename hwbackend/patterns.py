"""The `quweit.` BYOC pattern table and `partition_for_quweit`: offload each block's `call_tir` (emitted by
the native lowering, lowering.py) to the `relax.ext.quweit` codegen; everything else stays with TVM."""

from __future__ import annotations

import functools

from .lowering import PRIMFUNC_NAME

PATTERN_NAME = "quweit.weightless_block"


def patterns():
    """The pattern table entries (also registered globally under the `quweit` prefix)."""
    from tvm.relax.backend.pattern_registry import FusionPattern
    from tvm.relax.dpl import is_call_tir

    # No Python check function: a Python callback held by TVM's global registry crashes the
    # interpreter at exit (double free). The PrimFunc name (substring match) is the whole test; the
    # frontend passes every parameter as a constant, which the codegen reads back and validates.
    return [FusionPattern(PATTERN_NAME, is_call_tir(PRIMFUNC_NAME), {}, None)]


@functools.lru_cache(maxsize=1)
def register_quweit_patterns() -> None:
    """Add the table to TVM's pattern registry once (so `get_patterns_with_prefix("quweit")` finds it)."""
    from tvm.relax.backend.pattern_registry import register_patterns

    register_patterns(patterns())


def partition_for_quweit(mod):
    """Wrap every offloadable block in a function marked `Codegen: quweit`, constants bound inside.

    Follow with `relax.transform.RunCodegen()` (`tvm.compile` does not run it). A module without blocks
    is returned unchanged.
    """
    from tvm import relax
    from tvm.relax.backend.pattern_registry import get_patterns_with_prefix

    from . import codegen  # noqa: F401  (registers relax.ext.quweit)

    register_quweit_patterns()
    mod = relax.transform.FuseOpsByPattern(
        get_patterns_with_prefix("quweit"), bind_constants=True, annotate_codegen=True
    )(mod)
    return mod

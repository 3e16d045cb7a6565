"""MLP detection rules for the onnxscript rewriter: one rule family per file, variants as parameters.

Matching runs in passes: `fusions` turn each multi-node written form of an activation (`activations`)
and of an int8 Linear (`quantized`) into one node, then `mlp_rules` match `Linear -> act -> Linear` and
gated MLPs around those nodes, looking through fake quantization and training-mode Dropout
(`see_through`), and record each MLP (they rewrite nothing); `inline_fusions` restores the fused forms.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ._base import FUSION_DOMAINS, MlpRule, Record
from .activations import ACTIVATION_OPS, activation_fusions, inline_fused
from .gated import GatedMlp
from .linear import KIND_OPS, LINEAR_KINDS
from .linear_act_linear import LinearActLinear
from .quantized import linear_fusions
from .see_through import View, looking_through

#: (Linear form, bias on the up/gate Linears, bias on the down Linear). The two biases vary apart because
#: onnxruntime's optimizer moves the first into the activation (`BiasGelu`) and the second into the
#: `SkipLayerNormalization` after the MLP. Gemm's bias is an optional input of one pattern.
LINEAR_VARIANTS = tuple(
    [(kind, up, down) for kind in ("matmul", "int8") for up in (True, False) for down in (True, False)]
    + [("gemm", True, True), ("reshape_gemm", True, True), ("reshape_int8", True, True)]
)


def present_ops(model: ir.Model) -> set[tuple[str, str]]:
    """(domain, op_type) of every node of the main graph ("" for the default domain)."""
    return {("" if node.domain == "ai.onnx" else node.domain, node.op_type) for node in model.graph}


def fusions(present: set[tuple[str, str]] | None = None) -> list[pattern.RewriteRuleSet]:
    """The fusion passes worth running on a graph with the `present` ops (all when None)."""
    op_types = None if present is None else {op for domain, op in present if domain == ""}
    sets = [activation_fusions(op_types)]
    if present is None or ("", "MatMulInteger") in present:
        sets.append(linear_fusions())
    return [s for s in sets if s is not None]


def inline_fusions(model: ir.Model) -> None:
    inline_fused(model, FUSION_DOMAINS)


def mlp_rules(record: Record, present: set[tuple[str, str]] | None = None, view: View | None = None
              ) -> pattern.RewriteRuleSet | None:
    """Every MLP rule whose activation and Linear ops are `present` (gated first: its down-projection
    must not be mistaken for a smaller MLP); None when the graph can hold no MLP."""
    rules = [
        family.rule(linear=kind, up_bias=up, down_bias=down, act_op=act_op, record=record, view=view)
        for family in (GatedMlp, LinearActLinear)
        for kind, up, down in LINEAR_VARIANTS
        if (present is None or KIND_OPS[kind] in present) and (up == down or family.mixed_biases)
        for act_op in ACTIVATION_OPS
        if present is None or act_op in present
    ]
    return pattern.RewriteRuleSet(rules, commute=True) if rules else None


__all__ = [
    "FUSION_DOMAINS",
    "LINEAR_KINDS",
    "LINEAR_VARIANTS",
    "GatedMlp",
    "LinearActLinear",
    "MlpRule",
    "Record",
    "View",
    "fusions",
    "inline_fusions",
    "looking_through",
    "mlp_rules",
    "present_ops",
]

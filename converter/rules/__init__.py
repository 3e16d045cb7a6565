"""MLP detection/rewrite rules for the onnxscript rewriter: one rule family per file, variants as parameters.

Matching runs in two passes: `activation_fusions` turns each written form of an activation into one
node, then `mlp_rules` match `Linear -> act -> Linear` and gated MLPs around that node.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ._base import MlpRule, Record
from .activations import ACTIVATION_OPS, activation_fusions, inline_activations
from .gated import GatedMlp
from .linear import LINEAR_KINDS
from .linear_act_linear import LinearActLinear

#: (Linear form, with bias) variants: Gemm's bias is an optional input of one pattern.
LINEAR_VARIANTS = (("matmul", True), ("matmul", False), ("gemm", True), ("reshape_gemm", True))


def mlp_rules(record: Record) -> pattern.RewriteRuleSet:
    """Every MLP rule (gated first: its down-projection must not be mistaken for a smaller MLP)."""
    rules = [
        family.rule(linear=kind, bias=bias, act_op=act_op, record=record)
        for family in (GatedMlp, LinearActLinear)
        for kind, bias in LINEAR_VARIANTS
        for act_op in ACTIVATION_OPS
    ]
    return pattern.RewriteRuleSet(rules, commute=True)


__all__ = [
    "LINEAR_KINDS",
    "GatedMlp",
    "LinearActLinear",
    "MlpRule",
    "Record",
    "activation_fusions",
    "inline_activations",
    "mlp_rules",
]

"""Activation sub-patterns as real exporters write them (see FACTS.md), one builder per written form.

Each builder takes the rewriter's pattern builder `op` and the pre-activation value `h` and returns the
activation's output. Scalars are pattern constants (matched with a small relative tolerance); operand
order of Add/Mul is covered by the rule set's `commute=True`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from onnx_ir.passes.common import InlinePass
from onnxscript.rewriter import pattern

from .ort_fused import ORT_ACTIVATION_OPS

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_erf_inner(op, h):
    """Dynamo: `h * (0.5 * (1 + erf(h / sqrt2)))`."""
    return op.Mul(h, op.Mul(0.5, op.Add(op.Erf(op.Div(h, SQRT2)), 1.0)))


def gelu_erf_outer(op, h):
    """Legacy: `(h * (1 + erf(h / sqrt2))) * 0.5`."""
    return op.Mul(op.Mul(h, op.Add(op.Erf(op.Div(h, SQRT2)), 1.0)), 0.5)


def gelu_erf_inner_mul(op, h):
    """`h * (0.5 * (1 + erf(h * (1/sqrt2))))` (division written as a multiplication)."""
    return op.Mul(h, op.Mul(0.5, op.Add(op.Erf(op.Mul(h, 1.0 / SQRT2)), 1.0)))


def gelu_erf_outer_mul(op, h):
    """`(h * (1 + erf(h * (1/sqrt2)))) * 0.5`."""
    return op.Mul(op.Mul(h, op.Add(op.Erf(op.Mul(h, 1.0 / SQRT2)), 1.0)), 0.5)


def _tanh_core(op, h):
    inner = op.Mul(op.Add(h, op.Mul(op.Pow(h, 3.0), 0.044715)), SQRT_2_OVER_PI)
    return op.Add(op.Tanh(inner), 1.0)


def gelu_tanh_outer(op, h):
    """GPT-2 `gelu_new`: `(0.5 * h) * (1 + tanh(sqrt(2/pi) * (h + 0.044715 h^3)))`."""
    return op.Mul(op.Mul(h, 0.5), _tanh_core(op, h))


def gelu_tanh_inner(op, h):
    """`h * (0.5 * (1 + tanh(sqrt(2/pi) * (h + 0.044715 h^3))))`."""
    return op.Mul(h, op.Mul(0.5, _tanh_core(op, h)))


def silu(op, h):
    """SiLU / Swish: `h * sigmoid(h)`."""
    return op.Mul(h, op.Sigmoid(h))


def quick_gelu(op, h):
    """CLIP's QuickGELU: `h * sigmoid(1.702 h)`."""
    return op.Mul(h, op.Sigmoid(op.Mul(h, 1.702)))


#: Multi-node written forms, fused into one call of a model-local function `quweit.act::<name>` before
#: the MLP rules run (so those rules see one activation node), and inlined back afterwards where unused.
#: Each form names the op it cannot do without (forms whose op the graph lacks are not tried).
FUSED_FORMS: dict[str, tuple[Callable, str, str]] = {
    "gelu_erf_inner": (gelu_erf_inner, "gelu", "Erf"),
    "gelu_erf_outer": (gelu_erf_outer, "gelu", "Erf"),
    "gelu_erf_inner_mul": (gelu_erf_inner_mul, "gelu", "Erf"),
    "gelu_erf_outer_mul": (gelu_erf_outer_mul, "gelu", "Erf"),
    "gelu_tanh_outer": (gelu_tanh_outer, "gelu_tanh", "Tanh"),
    "gelu_tanh_inner": (gelu_tanh_inner, "gelu_tanh", "Tanh"),
    "silu": (silu, "silu", "Sigmoid"),
    "quick_gelu": (quick_gelu, "quick_gelu", "Sigmoid"),
}
ACT_DOMAIN = "quweit.act"
#: Activation nodes the MLP rules accept: (domain, op_type) -> name for people. `Gelu` is refined by its
#: `approximate` attribute, `QuickGelu` by its `alpha`; onnxruntime's fused ones are in `ort_fused`.
ACTIVATION_OPS: dict[tuple[str, str], str] = {
    ("", "Relu"): "relu",
    ("", "Gelu"): "gelu",
    **{(ACT_DOMAIN, name): name for name in sorted({form[1] for form in FUSED_FORMS.values()})},
    **ORT_ACTIVATION_OPS,
}


class ActivationFusion(pattern.RewriteRuleClassBase):
    """Fuse one written form of an activation into a call of a model-local function (`as_function`)."""

    def __init__(self, form: str) -> None:
        super().__init__(name=f"fuse[{form}]", as_function=True)
        self.build, self.act, _ = FUSED_FORMS[form]

    def pattern(self, op, h):
        return self.build(op, h)

    def rewrite(self, op, h):
        return op.op(self.act, h, _domain=ACT_DOMAIN)


def activation_fusions(present: set[str] | None = None) -> pattern.RewriteRuleSet | None:
    """The fusions of the written forms whose key op is among `present` op types (all when None)."""
    rules = [ActivationFusion.rule(form) for form, (_, _, key) in FUSED_FORMS.items() if present is None or key in present]
    return pattern.RewriteRuleSet(rules, commute=True) if rules else None


def inline_fused(model, domains: tuple[str, ...]) -> None:
    """Inline the fused calls of `domains` that no MLP rule consumed, restoring the exporter's nodes."""
    InlinePass(criteria=lambda f: f.domain in domains)(model)
    for key in [k for k in model.functions if k[0] in domains]:
        del model.functions[key]
    for domain in domains:
        model.opset_imports.pop(domain, None)

"""onnxruntime's fused activations (`com.microsoft`), as its transformer optimizer and optimum -O1..-O4 write them.

`onnxruntime.transformers.optimizer.optimize_model` (opt_level 1 and 2) turns a BERT MLP into
`MatMul -> BiasGelu(h, b1) -> MatMul -> SkipLayerNormalization(y, residual, gamma, beta, b2)`: the first
bias moves into the activation, the second into the normalization after the MLP. GPT-2's tanh GELU and
`enable_gelu_approximation` give `FastGelu` (with or without its bias input), CLIP gives `QuickGelu`, and a
GELU whose bias was not fused stays a `com.microsoft` `Gelu`.

These are single activation nodes, so the MLP rules take them as they are (`ACTIVATION_OPS`). A fused
first bias is read into the up (or gate) projection's bias. The second bias stays where the optimizer put
it: the block replaces `MatMul -> act -> MatMul` and produces the MLP output without that bias, and the
`SkipLayerNormalization` goes on adding it (its other outputs, such as the residual sum GPT-2 reads,
stay exact).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

ORT_DOMAIN = "com.microsoft"
QUICK_GELU_ALPHA = 1.702

#: (domain, op) -> activation name for people
ORT_ACTIVATION_OPS: dict[tuple[str, str], str] = {
    (ORT_DOMAIN, "Gelu"): "gelu",
    (ORT_DOMAIN, "BiasGelu"): "gelu",
    (ORT_DOMAIN, "FastGelu"): "gelu_tanh",
    (ORT_DOMAIN, "QuickGelu"): "quick_gelu",
}
#: fused activations with an optional second input: the bias added before the activation
WITH_BIAS = {(ORT_DOMAIN, "BiasGelu"), (ORT_DOMAIN, "FastGelu")}


def fused_bias(node: ir.Node) -> ir.Value | None:
    """The bias input of a `BiasGelu`/`FastGelu` node, or None."""
    if (node.domain, node.op_type) in WITH_BIAS and len(node.inputs) > 1:
        return node.inputs[1]
    return None


def quick_gelu_name(node: ir.Node) -> str:
    """`QuickGelu(x) = x * sigmoid(alpha x)`: "quick_gelu" for CLIP's alpha, "silu" for 1, else the formula."""
    alpha = node.attributes.get_float("alpha", QUICK_GELU_ALPHA)
    if np.isclose(alpha, QUICK_GELU_ALPHA, rtol=1e-5):
        return "quick_gelu"
    if alpha == 1.0:
        return "silu"
    return f"x*sigmoid({alpha:.6g}x)"

"""One MLP's replacement (low-rank bypass + block) fitted to captured pairs, weighted by what the model sees.

The recipe for one MLP, in order (each step measured in examples/results/minilm_ablation.json):
1. the weights of the error: a transformer adds the MLP's output to its residual stream and normalises
   the sum (LayerNorm). An error in output dimension `d` of token `t` reaches the model as
   `|gamma_d| / sigma_t` (the norm's scale over the token's spread), so outlier dimensions of large
   spread count for little and the ordinary ones, where the meaning is, for much (`norm_after`);
2. a low-rank linear bypass by weighted reduced-rank regression (`bypass.fit_bypass`);
3. the block's closed form on what the bypass leaves (`closed_form`);
4. per-block reconstruction by gradient: block and bypass trained together on the weighted error, on the
   inputs that the model with the earlier MLPs already converted produces (as AdaRound/BRECQ do), with
   the teacher MLP's outputs on those inputs as targets. The better of before/after on held-out pairs wins.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from quweit.custom_ops.config import BlockConfig

from .bypass import LowRankBypass, Replacement, fit_bypass
from .closed_form import CLOSED_FORM_SAMPLES, closed_form_params

NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization")
HOLDOUT = 0.1


@dataclasses.dataclass(frozen=True)
class NormAfter:
    """The normalisation that first reads the MLP's output (through residual Adds): its input, scale and
    output (the hidden state the next layer reads)."""

    input: str
    scale: np.ndarray  # gamma [D]
    output: str = ""


def norm_after(model: onnx.ModelProto, output: str, hops: int = 3) -> NormAfter | None:
    """Follow `output` through up to `hops` Add nodes to a normalisation node with a constant scale."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    frontier = [output]
    for _ in range(hops + 1):
        following = []
        for value in frontier:
            for node in readers.get(value, []):
                if node.op_type in NORM_OPS and node.input[0] == value and len(node.input) > 1 \
                        and node.input[1] in inits:
                    return NormAfter(value, np.abs(numpy_helper.to_array(inits[node.input[1]])).astype(np.float32),
                                     node.output[0])
                if node.op_type == "Add":
                    following.append(node.output[0])
        frontier = following
    return None


def error_weights(y: np.ndarray, norm: NormAfter | None, norm_input: np.ndarray | None) -> np.ndarray:
    """Per-token, per-dimension weights `[N, D]` of the output error (see the module's step 1).

    Without a normalisation after the MLP, each dimension is scaled by its spread (`1 / std_d`).
    """
    if norm is None or norm_input is None or norm.scale.shape != (y.shape[1],):
        return np.broadcast_to(1.0 / np.maximum(y.std(0), 1e-6), y.shape).astype(np.float32)
    spread = np.maximum(norm_input.std(-1, keepdims=True), 1e-6)
    return (norm.scale[None, :] / spread).astype(np.float32)


def fit_replacement(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    config: BlockConfig,
    rank: int = 32,
    steps: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    value_lr: float = 1e-3,
    bypass_lr: float = 1e-3,
    seed: int = 0,
) -> Replacement:
    """The replacement of one MLP with inputs `x [N, D_in]`, outputs `y [N, D_out]`, error `weights [N, D_out]`.

    Learning rates: `lr` for tables (the closed form's greedy tables are a good start: at the end-to-end
    rate of 1e-2, EFD flips undo them), `value_lr` relative to the outputs' spread, `bypass_lr` absolute.
    The bypass's closed form weights outputs by their mean weight; the gradient steps use every token's own.
    """
    x = np.ascontiguousarray(x, np.float32)
    y = np.ascontiguousarray(y, np.float32)
    if config.popcount or config.value_bits != BlockConfig().value_bits:
        value_lr = 0.0  # hardware-designed values (popcount, narrow): training would move them out of that form
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_hold = max(1, int(len(x) * HOLDOUT)) if steps and len(x) > 10 else 0
    hold, train = order[:n_hold], order[n_hold:]
    bypass = fit_bypass(x[train], y[train], rank, weights[train].mean(0)) if rank else None
    residual = y - bypass(x) if bypass is not None else y
    subset = train[:CLOSED_FORM_SAMPLES]
    block = closed_form_params(x[subset], residual[subset], config, seed=seed)
    start = Replacement(block, bypass)
    if not steps:
        return start
    trained = _train(start, x[train], y[train], weights[train], steps=steps, batch_size=batch_size, lr=lr,
                     value_lr=value_lr, bypass_lr=bypass_lr, seed=seed)
    errors = [weighted_error(r, x[hold], y[hold], weights[hold]) for r in (start, trained)]
    return (start, trained)[int(np.argmin(errors))]


def weighted_error(replacement: Replacement, x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Mean weighted squared error of the exact (integer) block plus bypass."""
    from quweit.custom_ops.reference import evaluate

    out = evaluate(replacement.block, x).astype(np.float64)
    if replacement.bypass is not None:
        out += replacement.bypass(x)
    return float((((out - y) * weights) ** 2).mean())


def _train(start: Replacement, x, y, weights, *, steps, batch_size, lr, value_lr, bypass_lr, seed) -> Replacement:
    import torch
    from quweit.custom_ops.torch_block import WeightlessBlock

    torch.manual_seed(seed)
    block = WeightlessBlock.from_params(start.block, table_magnitude=0.25, seed=seed).train()
    groups = [{"params": list(block.tables), "lr": lr},
              {"params": [block.encoded_values, block.bias], "lr": value_lr * float(np.abs(y).std(0).mean())}]
    linear = None
    if start.bypass is not None:
        linear = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start.bypass.arrays().values()]
        groups.append({"params": linear, "lr": bypass_lr})
    optimizer = torch.optim.Adam(groups)
    xs, ys, ws = (torch.from_numpy(a) for a in (x, y, weights))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(xs), (min(batch_size, len(xs)),), generator=generator)
        xb = xs[batch]
        out = block(xb)
        if linear is not None:
            out = out + (xb @ linear[0]) @ linear[1] + linear[2]
        loss = (((out - ys[batch]) * ws[batch]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        block.clamp_tables_()
    bypass = None if linear is None else LowRankBypass(*(p.detach().numpy().copy() for p in linear))
    return Replacement(block.to_params(node=start.block.node), bypass)


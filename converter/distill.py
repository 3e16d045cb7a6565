"""The conversion recipe that keeps a pretrained model's quality: sequential reconstruction, then distillation.

`Recipe` holds the choices; `fit_sequential` converts MLPs one at a time in graph order, each fitted
(`reconstruct.fit_replacement`) on the inputs that the model with the earlier MLPs already converted
produces, weighted by the normalisation after it; `distill` then trains the whole converted model against
the original for a fixed number of steps (`finetune.finetune`: blocks, bypasses and, by default, the
weights around them). Local fitting alone cannot keep a pretrained model (errors compound through it);
the end-to-end steps are the main job, and the start they train from decides how many they need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
from quweit.custom_ops.config import BlockConfig
from quweit.onnxio import Run, capture

from .bypass import Replacement
from .detect import rewrite_mlps
from .mlp import MlpMatch
from .reconstruct import error_weights, fit_replacement, norm_after


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How MLPs are replaced and trained (defaults: the measured recipe, examples/results/minilm_ablation.json)."""

    bypass_rank: int = 32  # 0: no bypass
    reconstruct_steps: int = 100  # per block, gradient steps on captured pairs
    reconstruct_batch: int = 1024  # tokens per reconstruction step
    distill_steps: int = 0  # end-to-end steps against the original model
    distill_batch: int = 16  # samples per end-to-end step
    distill_seconds: float | None = None  # end-to-end: stop after this many seconds (the schedule then decays
    # over the time, not the steps)
    total_seconds: float | None = None  # the whole conversion: distillation gets what fitting leaves of it
    train_dense: bool = True  # end-to-end: also the weights around the blocks (attention, norms)
    train_lookups: bool = False  # and the embedding tables (a dense step over every row; see onnx_torch)
    reconstruct_bypass_lr: float = 1e-3  # per-block reconstruction's bypass rate
    # End-to-end learning rates (examples/results/minilm_recipe_search.json, validation split: three times
    # the first search's 1e-2 / 3e-3 / 1e-3 / 1e-3 kept 0.788 against 0.765 in 200 s; ten times diverged):
    lr: float = 3e-2  # tables
    value_lr: float = 1e-2  # encoded values and biases
    bypass_lr: float = 3e-3
    dense_lr: float = 2e-3
    schedule: str = "cosine"
    warmup_share: float = 0.05  # of the end-to-end steps, linear learning-rate warm-up
    hidden_weight: float = 0.0  # end-to-end: weight of matching the hidden state after each block (the
    # normalisation that reads it) besides the output, as TinyBERT and PIM-DL's per-layer terms do

    def summary(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fit_sequential(
    prepared: onnx.ModelProto,
    mlps: list[MlpMatch],
    feeds: list[Run],
    config_for: Callable[[MlpMatch], BlockConfig],
    recipe: Recipe,
    *,
    seed: int = 0,
    on_done: Callable[[MlpMatch], None] | None = None,
) -> dict[str, Replacement]:
    """Replacements for `mlps` (graph order), each fitted with the ones before it already in the model.

    Targets are the original MLP's outputs on the converted model's inputs to it (the MLP is still in
    place when its inputs are captured), so each block also learns to work from its upstream's errors.
    """
    chosen: dict[str, Replacement] = {}
    for mlp in mlps:
        current, _ = rewrite_mlps(prepared, chosen)
        norm = norm_after(current, mlp.output)
        names = [mlp.input, mlp.output] + ([norm.input] if norm else [])
        pairs = capture(current, feeds, names)
        weights = error_weights(pairs[mlp.output], norm, pairs.get(norm.input) if norm else None)
        chosen[mlp.output] = fit_replacement(
            pairs[mlp.input], pairs[mlp.output], weights, config=config_for(mlp), rank=recipe.bypass_rank,
            steps=recipe.reconstruct_steps, batch_size=recipe.reconstruct_batch, bypass_lr=recipe.reconstruct_bypass_lr,
            seed=seed)
        del pairs, weights
        if on_done is not None:
            on_done(mlp)
    return chosen


def distill(
    converted: onnx.ModelProto,
    original: onnx.ModelProto,
    data: dict[str, np.ndarray],
    recipe: Recipe,
    *,
    seed: int = 0,
    progress: bool = True,
) -> tuple[onnx.ModelProto, list[float]]:
    """`recipe.distill_steps` end-to-end steps of `converted` against `original` on `data`, or fewer when
    `recipe.distill_seconds` run out first; (model, losses)."""
    from .finetune import FinetuneOptions, Teacher, finetune

    options = FinetuneOptions(
        steps=recipe.distill_steps, batch_size=recipe.distill_batch, lr=recipe.lr, value_lr=recipe.value_lr,
        bypass_lr=recipe.bypass_lr, train_dense=recipe.train_dense, train_lookups=recipe.train_lookups,
        dense_lr=recipe.dense_lr, budget_seconds=recipe.distill_seconds,
        schedule=recipe.schedule, warmup_steps=round(recipe.warmup_share * recipe.distill_steps), seed=seed,
        hidden=tuple(hidden_states(converted, original)), hidden_weight=recipe.hidden_weight)
    return finetune(converted, data, teacher=Teacher(original), options=options, progress=progress)


def hidden_states(converted: onnx.ModelProto, original: onnx.ModelProto) -> list[str]:
    """The hidden state after each block of `converted`: the output of the normalisation that reads the
    block's residual sum, where `original` has a value of the same name (the model outputs excluded:
    the output loss already holds them)."""
    from quweit.custom_ops.params import DOMAIN, OP_TYPE

    in_original = {name for node in original.graph.node for name in node.output}
    outputs = {o.name for o in converted.graph.output}
    found = []
    for node in converted.graph.node:
        if (node.domain, node.op_type) == (DOMAIN, OP_TYPE):
            norm = norm_after(converted, node.output[0], hops=4)  # block -> bypass Add -> residual Add -> norm
            if norm and norm.output in in_original and norm.output not in outputs and norm.output not in found:
                found.append(norm.output)
    return found

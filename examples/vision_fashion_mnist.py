"""The QuWeiT paper's vision experiment at CPU scale: a small ViT on Fashion-MNIST, its MLPs made weightless.

Three models, one test set (the official 10,000 test images), all evaluated in onnxruntime with quweit's
kernel (protocol in `paper_common.py`):
- dense: the ViT trained normally (Adam, cosine decay);
- converted: the trained ViT exported, all MLPs replaced by `quweit-convert`, fine-tuned with
  cross-entropy by `quweit-finetune` (labels in the npz, no teacher);
- from scratch: the untrained ViT exported and converted, then trained by `quweit-finetune` for the same
  steps, batch and learning rate as the dense model.
`--sweep` instead converts the trained dense model with each block structure (LUT inputs n, thermometer
bits T, LUTs per output G, a hidden LUT layer) and fine-tunes it, recording test accuracy, LUTs and
multiplications removed (the paper's open question 1).

Data: the Debian `dataset-fashion-mnist` package (set-up line in `converter/textdata.py` and the README).
Then

    python examples/vision_fashion_mnist.py [--quick] [--sweep] [--out DIR]
    torchrun --standalone --nproc_per_node 2 examples/vision_fashion_mnist.py ...   # the same, DDP

5,000 training images (a seeded draw) are a validation split: recipe choices were made on it, never on
the test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import paper_common as pc
import paper_data
import torch
from torch import nn

EXPERIMENT = pc.Experiment(
    name="vision_fashion_mnist", task="Fashion-MNIST 10-class image classification (Debian dataset-fashion-mnist)",
    metric_name="test accuracy", metric_key="accuracy", higher_is_better=True,
    target="quweit test accuracy within 1.0 point of dense (paper: at or above)", sweep=pc.sweep_blocks(1024))
VALIDATION = 5000
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (of [0, 1] intensities)


class ViT(nn.Module):
    """I-ViT-T/DeiT-like: patch embedding (reshape + Linear), class token, learned positions, pre-norm blocks."""

    def __init__(self, *, image: int = 28, patch: int = 7, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 4, classes: int = 10) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
        self.grid, self.patch = image // patch, patch
        self.patch_embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.blocks = nn.ModuleList(pc.EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        pc.init_weights(self)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, g, p = pixel_values.shape[0], self.grid, self.patch
        patches = pixel_values.reshape(batch, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(batch, g * g, p * p)
        x = torch.cat([self.cls.expand(batch, -1, -1), self.patch_embed(patches)], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def load_splits(seed: int, quick: bool) -> dict[str, dict[str, np.ndarray]]:
    """train / validation (5,000 of the training images, a seeded draw) / test; pixels normalised."""
    raw = paper_data.fashion_mnist()
    order = np.random.default_rng(seed).permutation(len(raw["train_labels"]))

    def pack(images, labels):
        x = ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
        return {"pixel_values": np.ascontiguousarray(x), pc.LABELS: labels.astype(np.int64)}

    train, val = np.sort(order[:-VALIDATION]), np.sort(order[-VALIDATION:])
    splits = {"train": pack(raw["train_images"][train], raw["train_labels"][train]),
              "validation": pack(raw["train_images"][val], raw["train_labels"][val]),
              "test": pack(raw["test_images"], raw["test_labels"])}
    if quick:  # a smoke test of the pipeline, not of accuracy
        splits = {name: {k: v[:n] for k, v in split.items()}
                  for (name, split), n in zip(splits.items(), (1024, 256, 256))}
    return splits


def accuracy(model_path: Path, split: dict[str, np.ndarray]) -> float:
    logits = pc.run_batched(pc.session(model_path), {"pixel_values": split["pixel_values"]})
    return float(np.mean(logits.argmax(-1) == split[pc.LABELS]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_argument_group("model")
    g.add_argument("--patch", type=int, default=7)
    g.add_argument("--dim", type=int, default=64)
    g.add_argument("--depth", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    pc.add_arguments(p, steps=2000, batch_size=128, lr=1e-3, finetune_steps=1000, finetune_dense_lr=3e-4,
                     calib=1024, sweep_steps=500, hidden_example=1024)
    args = p.parse_args()
    pc.quick(args)
    splits = load_splits(args.seed, args.quick)
    config = {"image": 28, "patch": args.patch, "dim": args.dim, "depth": args.depth, "heads": args.heads,
              "mlp_ratio": 4, "classes": 10}

    def evaluate(path: Path) -> dict:
        return {"test": accuracy(path, splits["test"]), "validation": accuracy(path, splits["validation"])}

    pc.run(EXPERIMENT, args, splits=splits, build=lambda: ViT(**config), input_name="pixel_values",
           dynamic={0: "batch"}, evaluate=evaluate,
           attention_macs=args.depth * 2 * ((28 // args.patch) ** 2 + 1) * args.dim,  # scores + weighted sum
           describe={"data": {name: len(split[pc.LABELS]) for name, split in splits.items()} | {
               "calibration": args.calib},
               "model": {"kind": "ViT (pre-norm, class token, patch embedding as reshape + Linear)", **config}})


if __name__ == "__main__":
    main()

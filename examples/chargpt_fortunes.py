"""The QuWeiT paper's language experiment at CPU scale: a nanoGPT-like character model on `fortunes`.

Three models (see `paper_common.py` for the protocol), all evaluated in onnxruntime with quweit's kernel:
- dense: the decoder trained normally (Adam, cosine decay);
- converted: the trained decoder exported, all MLPs replaced by `quweit-convert`, fine-tuned with the
  next-character cross-entropy by `quweit-finetune` (per-token labels `[N, S]` in the npz, no teacher);
- from scratch: the untrained decoder exported and converted, then trained by `quweit-finetune` for the
  same steps, batch and learning rate as the dense model.
Metric: cross-entropy in nats per character on held-out fortunes (every position of every window, each
character predicted from up to `--context` characters before it). Each model also writes 200 sampled
characters from one prompt and one seed, sampled through onnxruntime with the kernel.
`--sweep` trains the dense model once, then converts and fine-tunes it for each block structure.

Data: the Debian `fortunes` and `fortunes-min` packages (set-up line in `converter/textdata.py` and the README).
Then

    python examples/chargpt_fortunes.py [--quick] [--sweep] [--out DIR]
    torchrun --standalone --nproc_per_node 2 examples/chargpt_fortunes.py ...   # the same, DDP

Fortunes are split by a hash of their text into train (90%), validation (5%, used for recipe choices) and
test (5%, the reported metric).
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
    name="chargpt_fortunes", task="next-character prediction on the Debian fortunes corpus",
    metric_name="test cross-entropy (nats/char)", metric_key="loss", higher_is_better=False,
    target="quweit test loss within 5% of dense (goal: 2%)", sweep=pc.sweep_blocks(2048))
VOCAB = "\n" + "".join(chr(c) for c in range(0x20, 0x7F))  # paper_data.fortune_entries keeps exactly these
SEPARATOR = "\n\n"  # between fortunes
PROMPT = "The meaning of life is"


class CharGPT(nn.Module):
    """nanoGPT-like: token + learned position embeddings, pre-norm causal blocks, final norm, linear head."""

    def __init__(self, *, vocab: int = len(VOCAB), context: int = 128, dim: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.ModuleList(pc.EncoderBlock(dim, heads, mlp_ratio, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        pc.init_weights(self)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.pos[:, : input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def encode(text: str) -> np.ndarray:
    """Character ids (int64) of `text`; every character must be in `VOCAB`."""
    table = np.full(128, -1, np.int64)
    table[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    ids = np.where(codes < 128, table[np.minimum(codes, 127)], -1)
    if (ids < 0).any():
        bad = text[int(np.flatnonzero(ids < 0)[0])]
        raise ValueError(f"character {bad!r} is outside the vocabulary (printable ASCII and newline)")
    return ids


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def windows(ids: np.ndarray, context: int, stride: int) -> dict[str, np.ndarray]:
    """`input_ids` and next-character `labels`, both int64 `[N, context]`, windows starting every `stride`."""
    starts = np.arange(0, len(ids) - context - 1, stride)
    index = starts[:, None] + np.arange(context)[None]
    return {"input_ids": ids[index], pc.LABELS: ids[index + 1]}


def load_splits(context: int, quick: bool) -> dict[str, dict[str, np.ndarray]]:
    texts = paper_data.split_entries(paper_data.fortune_entries())
    ids = {name: encode(SEPARATOR.join(entries) + SEPARATOR) for name, entries in texts.items()}
    if quick:
        ids = {name: v[: (60_000 if name == "train" else 10_000)] for name, v in ids.items()}
    # training windows overlap by half; held-out windows tile the text, so every character counts once
    return {name: windows(v, context, context // 2 if name == "train" else context) for name, v in ids.items()}


def loss_nats(model_path: Path, split: dict[str, np.ndarray]) -> float:
    """Mean next-character cross-entropy (nats/char) over every position of the held-out windows."""
    logits = pc.run_batched(pc.session(model_path), {"input_ids": split["input_ids"]}, batch=64).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, split[pc.LABELS][..., None], axis=-1)
    return float(-picked.mean())


def sample(model_path: Path, *, prompt: str, length: int, context: int, seed: int, temperature: float) -> str:
    """`length` characters after `prompt`, drawn one at a time from the model's softmax in onnxruntime."""
    sess = pc.session(model_path, threads=1)
    rng = np.random.default_rng(seed)
    ids = list(encode(prompt))
    for _ in range(length):
        window = np.asarray(ids[-context:], np.int64)[None]
        logits = sess.run(None, {"input_ids": window})[0][0, -1].astype(np.float64) / temperature
        probs = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(VOCAB), p=probs / probs.sum())))
    return decode(ids[len(prompt):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_argument_group("model")
    g.add_argument("--context", type=int, default=64)
    g.add_argument("--dim", type=int, default=128)
    g.add_argument("--depth", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g = p.add_argument_group("samples")
    g.add_argument("--prompt", default=PROMPT)
    g.add_argument("--sample-chars", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    pc.add_arguments(p, steps=2000, batch_size=32, lr=2e-3, finetune_steps=1000, finetune_dense_lr=5e-4,
                     calib=256, sweep_steps=300, hidden_example=2048)
    args = p.parse_args()
    pc.quick(args)
    if args.quick:
        args.sample_chars = min(args.sample_chars, 20)
    splits = load_splits(args.context, args.quick)
    config = {"vocab": len(VOCAB), "context": args.context, "dim": args.dim, "depth": args.depth,
              "heads": args.heads, "mlp_ratio": 4}

    def evaluate(path: Path) -> dict:
        return {"test": loss_nats(path, splits["test"]), "validation": loss_nats(path, splits["validation"]),
                "sample": sample(path, prompt=args.prompt, length=args.sample_chars, context=args.context,
                                 seed=args.seed, temperature=args.temperature)}

    results = pc.run(EXPERIMENT, args, splits=splits, build=lambda: CharGPT(**config), input_name="input_ids",
                     dynamic={0: "batch", 1: "sequence"}, evaluate=evaluate,
                     # scores + weighted sum (2 products) over the causal past, (context + 1) / 2 positions on average
                     attention_macs=args.depth * (args.context + 1) * args.dim, describe={
                         "data": {"train_windows": len(splits["train"]["input_ids"]),
                                  "held_out_characters": {n: int(s[pc.LABELS].size) for n, s in splits.items()
                                                          if n != "train"},
                                  "calibration_windows": args.calib, "vocabulary": len(VOCAB),
                                  "split": "fortunes by a hash of their text: 90% train, 5% validation, 5% test"},
                         "model": {"kind": "nanoGPT-like causal decoder", **config},
                         "samples": {"prompt": args.prompt, "characters": args.sample_chars,
                                     "temperature": args.temperature, "seed": args.seed}})
    for model in ("dense", "converted", "from_scratch"):
        if model in results:
            print(f"--- {model}:\n{args.prompt}{results[model]['sample']}")


if __name__ == "__main__":
    main()

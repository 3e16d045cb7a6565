"""A downstream task: WordNet gloss -> lexicographer class (45 classes), dense MiniLM against its quweit version.

1. Data: every WordNet 3.0 synset (Debian `wordnet-base`) whose gloss is not in the shipped sample
   (converter/data/wordnet_glosses.txt: the glosses of calibration and held-out checks elsewhere), split
   by a checksum of the synset id (`converter/textdata.py`: 80% train, 10% validation, 10% test); `--train`,
   `--validation`, `--test` synsets drawn from each (seeded).
2. Dense baseline: all-MiniLM-L6-v2 + mean pooling + a linear head, fine-tuned with AdamW for
   `--dense-steps` steps (torch), then exported to ONNX (logits as the output).
3. quweit: that ONNX model with all six MLPs converted by the converter's recipe (low-rank bypass,
   sequential reconstruction, `--distill-steps` end-to-end steps against the dense model's logits on
   training glosses, no labels), then `--task-steps` steps of `quweit-finetune`'s task loss (labels) on the
   training split, everything trained.
4. Accuracy of both in onnxruntime on the validation and test splits (test read once, at the end).

    python examples/minilm_lexname.py [--dense-steps 1500] [--distill-steps 600] [--task-steps 1500]

Needs the example data once (`quweit.converter.textdata` says how).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import _results
import numpy as np
import onnx
import torch
from quweit.converter import minilm, textdata
from quweit.converter.convert import convert
from quweit.converter.distill import Recipe
from quweit.converter.finetune import FinetuneOptions, finetune
from quweit.onnxio import load_model, make_session

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_lexname.json"
CLASSES = 45


class Classifier(torch.nn.Module):
    """MiniLM, mean pooling over real tokens, a linear head: logits [batch, 45]."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = minilm.pretrained_bert()
        self.head = torch.nn.Linear(self.bert.config.hidden_size, CLASSES)

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))


def splits(args) -> dict[str, tuple[list[str], np.ndarray]]:
    shipped = set(minilm.sentences())
    by_split: dict[str, list[tuple[str, int]]] = {"train": [], "validation": [], "test": []}
    for synset, lexname, gloss in textdata.lexname_synsets():
        if gloss not in shipped:
            by_split[textdata.split_of(synset)].append((gloss, lexname))
    out = {}
    for name, count in (("train", args.train), ("validation", args.validation), ("test", args.test)):
        rows = by_split[name]
        random.Random(args.seed).shuffle(rows)
        rows = rows[:count]
        out[name] = ([g for g, _ in rows], np.array([c for _, c in rows], dtype=np.int64))
    return out


def train_dense(texts: list[str], labels: np.ndarray, args) -> Classifier:
    torch.manual_seed(args.seed)
    model = Classifier().train()
    optimizer = torch.optim.AdamW([{"params": model.bert.parameters(), "lr": args.dense_lr},
                                   {"params": model.head.parameters(), "lr": args.head_lr}], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * s / args.dense_steps)))
    generator = np.random.default_rng(args.seed)
    for step in range(args.dense_steps):
        batch = generator.choice(len(texts), args.batch_size, replace=False)
        inputs = {k: torch.from_numpy(v) for k, v in minilm.tokenize([texts[i] for i in batch]).items()}
        loss = torch.nn.functional.cross_entropy(model(**inputs), torch.from_numpy(labels[batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"dense step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def accuracy(model: onnx.ModelProto, texts: list[str], labels: np.ndarray, batch: int = 128) -> float:
    sess = make_session(model)
    hits = 0
    for start in range(0, len(texts), batch):
        inputs = minilm.tokenize(texts[start:start + batch])
        hits += int((sess.run(None, inputs)[0].argmax(-1) == labels[start:start + batch]).sum())
    return hits / len(texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=30000, help="training synsets (of about 90,000)")
    p.add_argument("--validation", type=int, default=2000)
    p.add_argument("--test", type=int, default=5000)
    p.add_argument("--dense-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dense-lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--calib", type=int, default=512, help="training glosses for calibration and block fitting")
    p.add_argument("--distill-steps", type=int, default=600)
    p.add_argument("--task-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="quweit-lexname-"))
    out.mkdir(parents=True, exist_ok=True)
    data = splits(args)
    train_texts, train_labels = data["train"]
    load_before = os.getloadavg()

    started = time.monotonic()
    dense_torch = train_dense(train_texts, train_labels, args)
    dense_seconds = time.monotonic() - started
    dense_path = minilm.export_minilm(out / "lexname.dense.onnx", dense_torch, output="logits",
                                      output_axes={0: "batch"})
    dense = load_model(dense_path)
    dense_val = accuracy(dense, *data["validation"])
    print(f"dense: validation accuracy {dense_val:.4f} ({dense_seconds:.0f} s)", flush=True)

    started = time.monotonic()
    recipe = Recipe(distill_steps=args.distill_steps, distill_batch=args.batch_size)
    train_inputs = minilm.tokenize(train_texts)
    converted, report = convert(dense, calib=minilm.tokenize(train_texts[:args.calib]), sensitivity=False,
                                recipe=recipe, distill_data=train_inputs, seed=args.seed)
    convert_seconds = time.monotonic() - started
    distilled_val = accuracy(converted, *data["validation"])
    print(f"quweit after conversion + distillation: validation accuracy {distilled_val:.4f} "
          f"({convert_seconds:.0f} s)", flush=True)
    started = time.monotonic()
    options = FinetuneOptions(steps=args.task_steps, batch_size=args.batch_size, lr=recipe.lr,
                              value_lr=recipe.value_lr, bypass_lr=recipe.bypass_lr, train_dense=True,
                              dense_lr=recipe.dense_lr, schedule="cosine", seed=args.seed)
    tuned, losses = finetune(converted, {**train_inputs, "labels": train_labels}, options=options)
    task_seconds = time.monotonic() - started
    quweit_val = accuracy(tuned, *data["validation"])
    print(f"quweit after task fine-tuning: validation accuracy {quweit_val:.4f} ({task_seconds:.0f} s)", flush=True)

    dense_test, quweit_test = accuracy(dense, *data["test"]), accuracy(tuned, *data["test"])
    print(f"test accuracy: dense {dense_test:.4f}, quweit {quweit_test:.4f}", flush=True)
    results = {
        "metric_name": "test accuracy, WordNet gloss -> lexicographer class (45 classes)",
        "higher_is_better": True,
        "dense_metric": round(dense_test, 4),
        "quweit_metric": round(quweit_test, 4),
        "validation": {"dense": round(dense_val, 4), "quweit_after_distillation": round(distilled_val, 4),
                       "quweit": round(quweit_val, 4)},
        "data": {"source": "Debian wordnet-base (WordNet 3.0), glosses not in converter/data/wordnet_glosses.txt",
                 "split": "crc32(pos:offset) % 10: 0 test, 1 validation, else train",
                 "train": len(train_texts), "validation": len(data["validation"][0]), "test": len(data["test"][0])},
        "model": "all-MiniLM-L6-v2 + mean pooling + linear head; quweit: all 6 MLPs converted",
        "multiplications": {"before": report["macs_before"], "after": report["macs_after"],
                            "bypass": report["bypass_macs"], "share_removed": round(report["mult_share_removed"], 4)},
        "recipe": recipe.summary(),
        "budget": {"dense_steps": args.dense_steps, "distill_steps": args.distill_steps,
                   "task_steps": args.task_steps, "batch_size": args.batch_size},
        "seconds": {"dense": round(dense_seconds, 1), "convert_and_distill": round(convert_seconds, 1),
                    "task": round(task_seconds, 1)},
        "task_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "seeds": {"data": args.seed, "training": args.seed},
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()]},
        **_results.provenance("minilm_lexname.py", args),
    }
    _results.write(args.results, results)


if __name__ == "__main__":
    main()

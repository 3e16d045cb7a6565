"""`quweit-convert`: swap a model's transformer MLPs for fitted `WeightlessBlock`s.

Exit codes: 0 converted; 2 bad usage or bad input; 3 valid model with no MLP found; 1 internal error
(a bug: please report it); 130/143 interrupted. The input is never modified and the outputs (model,
report) appear only when complete. `--debug` prints the traceback of an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
import time
from pathlib import Path

from quweit.command import naming, run_command
from quweit.custom_ops import BlockConfig
from quweit.onnxio import (
    atomic_files,
    has_external_data,
    json_text,
    load_inputs,
    load_ir,
    model_files,
    refuse_to_clobber,
    write_model,
)

from .convert import DEFAULT_FIDELITY_FLOOR, convert
from .distill import Recipe
from .errors import EXIT_OK, ConvertError, NoMlpError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quweit-convert", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="input ONNX model (weights may be in a side file)")
    p.add_argument("-o", "--output", help="output model (default: MODEL.quweit.onnx beside the input; minilm.quweit.onnx here with --example)")
    p.add_argument("--calib", help="calibration inputs: .npz with one array per graph input (first axis: samples)")
    p.add_argument("--layers", default="all", help="'all' (default), 'auto', 'none' or MLP indices such as 0,2,5")
    p.add_argument("--fidelity-floor", type=float, default=DEFAULT_FIDELITY_FLOOR,
                   help=f"--layers auto keeps the model's held-out fidelity at or above this (default {DEFAULT_FIDELITY_FLOOR})")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="training time for all blocks together "
                   "(default: closed-form fit only)")
    p.add_argument("--explain", action="store_true", help="also say why other candidates did not match")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--local", action="store_true", help="fit each block on the original model's activations "
                   "(default: sequentially, on the activations of the model with the earlier blocks in place)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-MLP sensitivity table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--example", choices=["minilm"], help="convert an embedded example: the pretrained "
                   "all-MiniLM-L6-v2, exported to ONNX in the current folder, calibrated and distilled on real "
                   f"English text shipped with quweit (recipe defaults: --bypass-rank {EXAMPLE_RECIPE.bypass_rank} "
                   f"--reconstruct-steps {EXAMPLE_RECIPE.reconstruct_steps} --distill {EXAMPLE_RECIPE.distill_steps}; the "
                   f"whole command within {EXAMPLE_SECONDS:.0f} s, distillation taking what fitting leaves)")
    r = p.add_argument_group("recipe (any of these turns it on; see converter/distill.py)")
    r.add_argument("--bypass-rank", type=int, metavar="R", help="a rank-R linear bypass (two MatMuls, "
                   "2*D*R multiplications per token) beside each block (0: none)")
    r.add_argument("--reconstruct-steps", type=int, metavar="N", help="gradient steps per block on its "
                   "captured inputs and outputs, with the earlier blocks converted")
    r.add_argument("--distill", type=int, metavar="STEPS", help="end-to-end distillation steps against the "
                   "original model after conversion (on --data, else the calibration samples)")
    r.add_argument("--distill-seconds", type=float, metavar="S", help="stop distilling after S seconds (the "
                   "learning-rate schedule then decays over the time)")
    r.add_argument("--data", help="distillation inputs: .npz like --calib (default: the calibration samples)")
    r.add_argument("--no-train-dense", action="store_true", help="distillation trains only blocks and bypasses, "
                   "not the weights around them")
    g = p.add_argument_group("block structure (defaults work for hidden sizes 64..4096)")
    g.add_argument("--lut-inputs", type=int, help="n, inputs of each LUT (default 6)")
    g.add_argument("--thresholds", type=int, help="thermometer bits per input feature (default 8)")
    g.add_argument("--luts-per-output", type=int, help="LUTs summed per output (default 8)")
    g.add_argument("--hidden-layers", help="sizes of LUT layers before the last one, e.g. 4096,2048 (default none)")
    h = p.add_argument_group("blocks designed for hardware (plain op v1 parameters; see hwbackend/README.md)")
    h.add_argument("--value-bits", type=int, help="signed bits of encoded values and biases (default 16; 4 or 8 "
                   "make narrow adders)")
    h.add_argument("--popcount", action="store_true", help="one value per output group (DWN's GroupSum: each LUT "
                   "adds 0 or 1, the magnitude goes to the output scale): the sum is a popcount in hardware")
    h.add_argument("--input-bits", type=int, help="bits of the quantized input (default 8; <= 6 makes every "
                   "thermometer comparator one LUT6)")
    return p


def _config(args) -> BlockConfig | None:
    given = {k: v for k, v in {"lut_inputs": args.lut_inputs, "thresholds_per_feature": args.thresholds,
                                "luts_per_output": args.luts_per_output, "value_bits": args.value_bits,
                                "input_bits": args.input_bits}.items() if v is not None}
    if args.popcount:
        given["popcount"] = True
    for name, low, high in (("value_bits", 2, 24), ("input_bits", 2, 16)):
        if name in given and not low <= given[name] <= high:
            raise ConvertError(f"--{name.replace('_', '-')} {given[name]}: must be in [{low}, {high}]")
    if args.hidden_layers:
        try:
            given["hidden_layers"] = tuple(int(v) for v in args.hidden_layers.split(","))
        except ValueError:
            raise ConvertError(f"--hidden-layers {args.hidden_layers!r}: expected sizes like 4096,2048") from None
    for name, value in given.items():
        if name == "popcount":
            continue
        if name != "hidden_layers" and value < 1 or name == "hidden_layers" and min(value) < 1:
            raise ConvertError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    return BlockConfig(**given) if given else None


#: The embedded example's recipe: the whole command within 10 minutes on 2 cores, distillation taking what
#: export and fitting leave (at most `distill_steps`; examples/results/minilm_ablation.json).
EXAMPLE_RECIPE = Recipe(bypass_rank=32, reconstruct_steps=100, distill_steps=3000)
EXAMPLE_SECONDS = 570.0
#: Glosses for the example's calibration (the last quarter is held out for the fidelity measure) and
#: distillation (the shipped sample's next ones; its last 256 stay unused, the examples' held-out set).
EXAMPLE_CALIB, EXAMPLE_DISTILL = 512, 8000


def _recipe(args) -> Recipe | None:
    flags = {"bypass_rank": ("--bypass-rank", args.bypass_rank),
             "reconstruct_steps": ("--reconstruct-steps", args.reconstruct_steps),
             "distill_steps": ("--distill", args.distill),
             "distill_seconds": ("--distill-seconds", args.distill_seconds)}
    given = {name: value for name, (_, value) in flags.items() if value is not None}
    for name, value in given.items():
        if value < 0:
            raise ConvertError(f"{flags[name][0]} {value}: must be >= 0")
    if args.no_train_dense:
        given["train_dense"] = False
    if args.example:
        return dataclasses.replace(EXAMPLE_RECIPE, total_seconds=EXAMPLE_SECONDS, **given)
    if not given and not args.data:
        return None
    return dataclasses.replace(Recipe(reconstruct_steps=0), **given)


def main(argv: list[str] | None = None) -> int:
    return run_command("quweit-convert", _parser(), _explained, argv)


def _explained(args) -> int:
    try:
        return _run(args)
    except NoMlpError as err:
        if args.explain:
            print("candidates that did not match:" if err.rejected else "no candidates (no Linear layer found)")
            for where, reason in err.rejected:
                print(f"  {where}: {reason}")
        raise


def _run(args) -> int:
    recipe = _recipe(args)
    if args.example:
        if args.model:
            raise ConvertError("give either MODEL or --example, not both")
        args.output = args.output or "minilm.quweit.onnx"  # the exported original lives in a temporary folder
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="quweit-minilm-") as workdir:
            from . import minilm

            print(f"exporting the pretrained all-MiniLM-L6-v2 to {Path(workdir) / 'minilm.onnx'} ...", flush=True)
            source = minilm.export_minilm(Path(workdir) / "minilm.onnx")
            calib = minilm.calibration_inputs(EXAMPLE_CALIB)
            print(f"calibration: {EXAMPLE_CALIB} WordNet glosses (real English text; the last quarter held out)",
                  flush=True)
            data = None
            if recipe.distill_steps and not args.data:
                data = minilm.calibration_inputs(EXAMPLE_DISTILL, offset=EXAMPLE_CALIB)
                print(f"distillation: up to {recipe.distill_steps} steps of {recipe.distill_batch} glosses, drawn "
                      f"from {EXAMPLE_DISTILL} others, in what fitting leaves of {recipe.total_seconds:.0f} s",
                      flush=True)
            if recipe.total_seconds is not None:  # the export's time counts too
                recipe = dataclasses.replace(recipe, total_seconds=recipe.total_seconds - (time.monotonic() - started))
            return _convert(args, source, calib, recipe, data)
    if not args.model:
        raise ConvertError("no MODEL given (or use --example minilm)")
    return _convert(args, Path(args.model), None, recipe, None)


def _convert(args, source: Path, calib, recipe: Recipe | None, data) -> int:
    output = Path(args.output) if args.output else source.with_name(
        (source.name.removesuffix(".onnx")) + ".quweit.onnx")
    refuse_to_clobber([output, *([args.report] if args.report else [])], args.force)
    if output.resolve() == source.resolve():
        raise ConvertError(f"output {output} is the input; choose another -o")
    config = _config(args)
    model = load_ir(source, upgrade=True)
    if args.calib:  # the data's errors name the data's file
        calib = load_inputs(args.calib, model, f"--calib {args.calib}")
    if args.data:
        data = load_inputs(args.data, model, f"--data {args.data}")
    with naming(source):  # errors found deep inside (an MLP, a node) still name the file
        converted, report = convert(
            model, calib=calib, layers=args.layers, config=config, budget_seconds=args.budget, seed=args.seed,
            progress=not args.quiet, fidelity_floor=args.fidelity_floor, sequential=not args.local,
            sensitivity=not args.no_sensitivity, recipe=recipe, distill_data=data,
        )
    from .report import format_table

    report["output"] = str(output)
    files = model_files(converted, output, has_external_data(source) or None)
    report_files = [Path(args.report)] if args.report else []
    with atomic_files(files + report_files, force=args.force) as temporary:  # model and report: both or none
        write_model(converted, temporary[:len(files)])
        if args.report:
            temporary[-1].write_text(json_text(report), encoding="utf-8")
    print(format_table(report, explain=args.explain))
    print(f"wrote {output}")
    if args.report:
        print(f"wrote {args.report}")
    if args.example:
        print(f"the converted model is {output.resolve()}; run it:\n"
              f"  python -m quweit.converter.minilm {shlex.quote(str(output))} \"a sentence to embed\" "
              "\"another sentence\"")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

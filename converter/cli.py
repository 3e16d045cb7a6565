"""`quweit-convert`: swap a model's transformer MLPs for fitted `WeightlessBlock`s.

Exit codes: 0 converted; 2 bad usage or bad input; 3 valid model with no MLP found. The input is never
modified and the output appears only when complete.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from quweit.custom_ops import BlockConfig
from quweit.onnxio import (
    EXIT_TERMINATED,
    BadInputError,
    Terminated,
    atomic_files,
    has_external_data,
    json_text,
    load_inputs,
    load_ir,
    model_files,
    refuse_to_clobber,
    sigterm_unwinds,
    write_model,
)

from .convert import DEFAULT_FIDELITY_FLOOR, convert
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
                   "all-MiniLM-L6-v2 exported to ONNX, calibrated on real English text shipped with quweit")
    g = p.add_argument_group("block structure (defaults work for hidden sizes 64..4096)")
    g.add_argument("--lut-inputs", type=int, help="n, inputs of each LUT (default 6)")
    g.add_argument("--thresholds", type=int, help="thermometer bits per input feature (default 8)")
    g.add_argument("--luts-per-output", type=int, help="LUTs summed per output (default 8)")
    g.add_argument("--hidden-layers", help="sizes of LUT layers before the last one, e.g. 4096,2048 (default none)")
    return p


def _config(args) -> BlockConfig | None:
    given = {k: v for k, v in {"lut_inputs": args.lut_inputs, "thresholds_per_feature": args.thresholds,
                                "luts_per_output": args.luts_per_output}.items() if v is not None}
    if args.hidden_layers:
        try:
            given["hidden_layers"] = tuple(int(v) for v in args.hidden_layers.split(","))
        except ValueError:
            raise ConvertError(f"--hidden-layers {args.hidden_layers!r}: expected sizes like 4096,2048") from None
    for name, value in given.items():
        if name != "hidden_layers" and value < 1 or name == "hidden_layers" and min(value) < 1:
            raise ConvertError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    return BlockConfig(**given) if given else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with sigterm_unwinds():
            return _run(args)
    except (ConvertError, BadInputError) as err:
        print(f"quweit-convert: error: {err}", file=sys.stderr)
        if args.explain and isinstance(err, NoMlpError):
            print("candidates that did not match:" if err.rejected else "no candidates (no Linear layer found)")
            for where, reason in err.rejected:
                print(f"  {where}: {reason}")
        return err.exit_code
    except KeyboardInterrupt as err:
        print("quweit-convert: interrupted; no output written", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else 130


def _run(args) -> int:
    if args.example:
        if args.model:
            raise ConvertError("give either MODEL or --example, not both")
        args.output = args.output or "minilm.quweit.onnx"  # the exported original lives in a temporary folder
        with tempfile.TemporaryDirectory(prefix="quweit-minilm-") as workdir:
            from . import minilm

            print(f"exporting the pretrained all-MiniLM-L6-v2 to {Path(workdir) / 'minilm.onnx'} ...", flush=True)
            source = minilm.export_minilm(Path(workdir) / "minilm.onnx")
            calib = minilm.calibration_inputs(minilm.DEFAULT_CALIB_SENTENCES)
            print(f"calibration: {minilm.DEFAULT_CALIB_SENTENCES} WordNet glosses (real English text)", flush=True)
            return _convert(args, source, calib)
    if not args.model:
        raise ConvertError("no MODEL given (or use --example minilm)")
    return _convert(args, Path(args.model), None)


def _convert(args, source: Path, calib) -> int:
    output = Path(args.output) if args.output else source.with_name(
        (source.name.removesuffix(".onnx")) + ".quweit.onnx")
    refuse_to_clobber([output, *([args.report] if args.report else [])], args.force)
    if output.resolve() == source.resolve():
        raise ConvertError(f"output {output} is the input; choose another -o")
    config = _config(args)
    model = load_ir(source, upgrade=True)
    if args.calib:
        calib = load_inputs(args.calib, model, f"--calib {args.calib}")
    converted, report = convert(
        model, calib=calib, layers=args.layers, config=config, budget_seconds=args.budget, seed=args.seed,
        progress=not args.quiet, fidelity_floor=args.fidelity_floor, sequential=not args.local,
        sensitivity=not args.no_sensitivity,
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
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

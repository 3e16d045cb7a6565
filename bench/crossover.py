"""Where each evaluation path of the kernel is fastest: the measurement behind the crossover constants
of runtime/src/custom_op.cc (kDirectMaxTokens, kByteSliceMaxTokens).

For block shapes of 384 features, 8 thresholds per feature and 8 LUTs per output with every LUT width
n = 1..8 (n = 6 is the converter's default), and the default with a hidden layer, one session per path
is created with the path forced (QUWEIT_KERNEL_PATH=direct,
byteslice, bitslice; read at kernel creation), and their runs alternate at each token count on 1
thread. Each run is followed by one on an empty batch whose median (the fixed cost of a run) is
subtracted, as in bench/kernel.py. Reported per shape: the median op time of each path at each count,
the fastest path, and the largest counts up to which direct, then byte-sliced, stay fastest.

    python bench/crossover.py [--json PATH [--force]] [--seconds S] [--tokens 1,2,...]
"""

from __future__ import annotations

import os
import sys

import numpy as np
from _common import alternate_timings, bench_parser, finish, refuse_to_clobber
from kernel import cpu_name, isa_in_use

PATHS = ("direct", "byteslice", "bitslice")
TOKENS = (1, 2, 3, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: name -> (in/out features, thresholds per feature, LUT inputs, LUTs per output, hidden layer sizes)
SHAPES = {f"lut{n}_384": (384, 8, n, 8, ()) for n in range(1, 9)} | {"lut6_384_two_layers": (384, 8, 6, 8, (1536,))}


def shape_params(name: str):
    from quweit.custom_ops import random_params

    features, thresholds, lut_inputs, group, hidden = SHAPES[name]
    return random_params(np.random.default_rng(0), in_features=features, out_features=features,
                         thresholds_per_feature=thresholds, lut_inputs=lut_inputs,
                         layer_sizes=(*hidden, features * group), input_bits=8)


def path_session(params, path: str):
    """A 1-thread session whose kernel was created with QUWEIT_KERNEL_PATH=path."""
    import onnxruntime as ort
    from quweit.custom_ops import make_block_model
    from quweit.runtime import make_session

    model = make_block_model(params)
    del model.functions[:]  # the kernel must run it
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    saved = os.environ.get("QUWEIT_KERNEL_PATH")
    os.environ["QUWEIT_KERNEL_PATH"] = path
    try:
        return make_session(model, threads=1, options=options)
    finally:
        if saved is None:
            os.environ.pop("QUWEIT_KERNEL_PATH")
        else:
            os.environ["QUWEIT_KERNEL_PATH"] = saved


def largest_prefix(fastest: list[str], counts: list[int], paths: set[str]) -> int:
    """The largest count up to which (from the smallest count on) the fastest path is in `paths`."""
    last = 0
    for path, count in zip(fastest, counts):
        if path not in paths:
            break
        last = count
    return last


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per (shape, token count)")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated token counts")
    args = parser.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    counts = [int(t) for t in args.tokens.split(",")]

    from quweit.custom_ops import evaluate
    from tqdm import tqdm

    results: dict = {
        "command": "python bench/crossover.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_name(), "cores": os.cpu_count(), "isa": isa_in_use(), "threads": 1,
        "seconds_per_count": args.seconds, "tokens": counts, "shapes": {}, "load_average_start": os.getloadavg()[0],
    }
    progress = tqdm(total=len(SHAPES) * len(counts), desc="crossover", file=sys.stderr)
    for name in SHAPES:
        params = shape_params(name)
        sessions = {path: path_session(params, path) for path in PATHS}
        rng = np.random.default_rng(1)
        shape = {"ms": {path: [] for path in PATHS}, "fastest": []}
        for count in counts:
            x = rng.standard_normal((1, count, params.in_features)).astype(np.float32)
            want = evaluate(params, x)
            for path, session in sessions.items():  # every path computes the op before it is timed
                if not np.array_equal(session.run(None, {"X": x})[0].view(np.int32), want.view(np.int32)):
                    raise SystemExit(f"error: path {path} differs from the reference ({name}, {count} tokens)")
            empty = np.zeros((1, 0, params.in_features), dtype=np.float32)
            timings = alternate_timings(sessions, {"X": x}, args.seconds, empty_feed={"X": empty})
            net = {path: (timings[path] - timings[f"{path}_fixed"]) * 1e3 for path in PATHS}
            for path in PATHS:
                shape["ms"][path].append(net[path])
            shape["fastest"].append(min(net, key=net.get))
            progress.update()
        shape["direct_fastest_up_to"] = largest_prefix(shape["fastest"], counts, {"direct"})
        shape["direct_or_byteslice_fastest_up_to"] = largest_prefix(shape["fastest"], counts, {"direct", "byteslice"})
        results["shapes"][name] = shape
    progress.close()

    for name, shape in results["shapes"].items():
        print(f"{name}: median op time (ms) per path, 1 thread")
        print(f"{'tokens':>7} " + " ".join(f"{p:>10}" for p in PATHS) + "  fastest")
        for i, count in enumerate(counts):
            print(f"{count:>7} " + " ".join(f"{shape['ms'][p][i]:>10.4f}" for p in PATHS) + f"  {shape['fastest'][i]}")
        print(f"  direct fastest up to {shape['direct_fastest_up_to']} tokens; direct or byte-sliced up to "
              f"{shape['direct_or_byteslice_fastest_up_to']}")
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

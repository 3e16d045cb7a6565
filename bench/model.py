"""Latency of the whole converted all-MiniLM-L6-v2 against the original, in onnxruntime.

The pretrained encoder is exported (`quweit.converter.minilm.export_minilm`) and all six MLPs are
replaced structurally by blocks of the converter's default configuration (`replace_mlps`, random valid
parameters: latency does not depend on the fitted values). The converted model runs the blocks on the
quweit kernel (its decomposition functions are removed, so nothing else can run them). Batch 1 x 128
tokens (and 2 threads as an extra); runs of the two sessions alternate in one process and the ratio
of median latencies is reported.

    python bench/model.py [--json PATH [--force]] [--seconds S] [--tokens N]
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from _common import alternate_timings, bench_parser, finish, record_timings, refuse_to_clobber
from quweit.onnxio import load_model, make_session

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def kernel_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the op's decomposition so the session must run every block on the kernel."""
    from quweit.custom_ops import DOMAIN, OP_TYPE

    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept)
    return model


def models(workdir: str) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    from quweit.converter import minilm
    from quweit.converter.convert import replace_mlps

    original = load_model(minilm.export_minilm(os.path.join(workdir, "minilm.onnx")))
    converted, report = replace_mlps(original)
    if report.get("mlps_replaced") != report.get("mlps_found") or not report.get("mlps_found"):
        raise SystemExit(f"error: replaced {report.get('mlps_replaced')}/{report.get('mlps_found')} MLPs; expected all")
    return original, kernel_only(converted), report


def feeds(model: onnx.ModelProto, tokens: int) -> dict[str, np.ndarray]:
    """Batch 1 x `tokens`: token ids drawn from the vocabulary range of ordinary words, full attention."""
    rng = np.random.default_rng(tokens)
    inits = {t.name for t in model.graph.initializer}
    values = {
        "input_ids": rng.integers(1000, 29000, size=(1, tokens)),
        "attention_mask": np.ones((1, tokens)),
        "token_type_ids": np.zeros((1, tokens)),
    }
    result = {}
    for graph_input in model.graph.input:
        if graph_input.name in inits:
            continue
        if graph_input.name not in values:
            raise SystemExit(f"error: unexpected model input '{graph_input.name}'")
        result[graph_input.name] = values[graph_input.name].astype(np.int64)
    return result


def sessions(original: onnx.ModelProto, converted: onnx.ModelProto, threads: int) -> dict[str, ort.InferenceSession]:
    def options() -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        return o

    return {"original": make_session(original, kernel=False, threads=threads, options=options()),
            "converted": make_session(converted, kernel=True, threads=threads, options=options())}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per thread count")
    parser.add_argument("--tokens", type=int, default=128, help="sequence length (batch 1)")
    args = parser.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    if args.tokens < 1:
        raise SystemExit(f"error: --tokens must be >= 1, got {args.tokens}")

    from tqdm import tqdm

    progress = tqdm(total=3, desc="model bench", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="quweit-bench-") as workdir:
        original, converted, report = models(workdir)
    progress.update()
    feed = feeds(original, args.tokens)
    results: dict = {
        "command": "python bench/model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "onnxruntime": ort.__version__, "model": "all-MiniLM-L6-v2", "batch": 1, "tokens": args.tokens,
        "mlps_replaced": report["mlps_replaced"], "mlps_found": report["mlps_found"],
    }
    # Other processes share the machine: the 1-minute load average says how quiet the run was.
    results["load_average_start"] = os.getloadavg()[0]
    for threads in (1, 2):
        timings = alternate_timings(sessions(original, converted, threads), feed, args.seconds)
        record_timings(results, timings, "original", "converted", f"{args.tokens}_{threads}t", "model_speedup")
        progress.update()
    progress.close()

    print(f"all-MiniLM-L6-v2, batch 1 x {args.tokens} tokens, onnxruntime {ort.__version__}, "
          f"{report['mlps_replaced']}/{report['mlps_found']} MLPs replaced")
    print(f"{'threads':>7} {'original ms':>12} {'converted ms':>13} {'speed-up':>9}   (medians; fastest runs: ratio)")
    for threads in (1, 2):
        key = f"{args.tokens}_{threads}t"
        print(f"{threads:>7} {results[f'original_ms_{key}']:>12.2f} {results[f'converted_ms_{key}']:>13.2f} "
              f"{results[f'model_speedup_{key}']:>8.2f}x   ({results[f'original_min_ms_{key}']:.2f} / "
              f"{results[f'converted_min_ms_{key}']:.2f} ms: {results[f'model_speedup_of_min_{key}']:.2f}x)")
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

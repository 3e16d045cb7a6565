"""Speed of the `WeightlessBlock` kernel against the dense MLP it replaces, in onnxruntime.

MiniLM size: dense 384 -> 1536 -> GELU -> 384 (GELU in the exporters' Erf form, so onnxruntime fuses it as it
would in a real model) against the converter's default block for that size (`default_config(384, 384)`), for
1, 4, 16, 128 and 2048 tokens (decoding to prefill) with 1 and 2 intra-op threads. Both sessions live in one
process and their runs alternate, so load from other processes hits both alike; the ratio of medians is
reported. With 2 threads they take turns of several runs after a pause instead
(`alternate_timings(settle=...)`), since onnxruntime's idle pool threads spin for tens of milliseconds after a
run and would take the other session's second core. Each run on the tokens is followed by a run on an empty
batch, whose median (the run's fixed cost: Python, onnxruntime's dispatch of each node, about 10 us) is
subtracted, so the ratio is that of the ops; the whole runs are recorded too (`*_run_ms_*`). Peak memory is
measured in fresh child processes: growth of the peak RSS (VmHWM) from just before the session is created to
the end of five runs (model weights, arenas and activations).

    python bench/kernel.py [--json PATH [--force]] [--seconds S] [--spinning 0|1]
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from _common import (
    POOL_SETTLE_SECONDS,
    alternate_timings,
    bench_parser,
    cpu_name,
    finish,
    record_timings,
    refuse_to_clobber,
)
from onnx import TensorProto, helper, numpy_helper

HIDDEN, INTERMEDIATE = 384, 1536
TOKENS = (1, 4, 16, 128, 2048)
THREADS = (1, 2)


def dense_mlp_model(seed: int = 0) -> onnx.ModelProto:
    """`MatMul + bias -> GELU (Erf form) -> MatMul + bias`, as torch's exporters write a BERT MLP."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((HIDDEN, INTERMEDIATE)) / np.sqrt(HIDDEN)).astype(np.float32)
    w2 = (rng.standard_normal((INTERMEDIATE, HIDDEN)) / np.sqrt(INTERMEDIATE)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(INTERMEDIATE)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    scalars = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    inits += [numpy_helper.from_array(np.array(v, dtype=np.float32), n) for n, v in scalars.items()]
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["hs"]),
        helper.make_node("Erf", ["hs"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["e1", "half"], ["e2"]),
        helper.make_node("Mul", ["h", "e2"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "dense_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def block_params(seed: int = 0):
    from quweit.custom_ops import default_config, random_params

    config = default_config(HIDDEN, HIDDEN)
    return random_params(
        np.random.default_rng(seed), in_features=HIDDEN, out_features=HIDDEN,
        thresholds_per_feature=config.thresholds_per_feature, lut_inputs=config.lut_inputs,
        layer_sizes=config.layer_sizes(HIDDEN), input_bits=config.input_bits,
    )


def block_model() -> onnx.ModelProto:
    from quweit.custom_ops import make_block_model

    model = make_block_model(block_params())
    del model.functions[:]  # the kernel must run it: no silent fallback to the decomposition
    return model


def make_session(kind: str, threads: int, spinning: int = 1) -> ort.InferenceSession:
    """A session on the dense MLP or the block; `spinning` is onnxruntime's intra-op pool setting (1: its
    default, idle pool threads spin; 0: they sleep, which leaves a shared machine's cores to others)."""
    from quweit.runtime import make_session as quweit_session

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(spinning))
    model = block_model() if kind == "block" else dense_mlp_model()
    return quweit_session(model, threads=threads, options=options)


def inputs(tokens: int) -> np.ndarray:
    return np.random.default_rng(tokens).standard_normal((1, tokens, HIDDEN)).astype(np.float32)


def check_block_exact(session: ort.InferenceSession) -> None:
    """The benchmarked kernel computes the op at every benchmarked token count (each path the kernel
    picks by count): equal to the numpy oracle bit for bit."""
    from quweit.custom_ops import evaluate

    for tokens in TOKENS:
        x = inputs(tokens)
        got, want = session.run(None, {"X": x})[0], evaluate(block_params(), x)
        if not np.array_equal(got.view(np.int32), want.view(np.int32)):
            raise SystemExit(f"error: the kernel's output differs from quweit.custom_ops.evaluate at {tokens} tokens; "
                             "not benchmarking it")


def _memory_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_rss_child(kind: str, tokens: int, threads: int, queue) -> None:
    x = inputs(tokens)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _memory_kib("VmRSS")
    session = make_session(kind, threads)
    for _ in range(5):
        session.run(None, {"X": x})
    queue.put((_memory_kib("VmHWM") - before) / 1024.0)


def peak_rss_mb(kind: str, tokens: int, threads: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_rss_child, args=(kind, tokens, threads, queue))
    child.start()
    value = queue.get(timeout=600)
    child.join()
    return float(value)


def isa_in_use() -> str:
    forced = os.environ.get("QUWEIT_ISA")
    if forced:
        return forced
    flags = open("/proc/cpuinfo").read().split()
    return "avx512" if {"avx512f", "avx512bw"} <= set(flags) else "avx2" if "avx2" in flags else "generic"


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per (tokens, threads) pair")
    parser.add_argument("--spinning", type=int, choices=(0, 1), default=1,
                        help="onnxruntime's session.intra_op.allow_spinning for both sessions (default 1, its own)")
    args = parser.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)

    from tqdm import tqdm

    results: dict = {
        "command": "python bench/kernel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "onnxruntime": ort.__version__, "cpu": cpu_name(), "cores": os.cpu_count(), "isa": isa_in_use(),
        "mlp": f"{HIDDEN}->{INTERMEDIATE}->GELU->{HIDDEN} float32", "block": "default_config(384, 384)",
        "allow_spinning": args.spinning, "seconds_per_pair": args.seconds,
    }
    # Other processes share the machine: the 1-minute load average says how quiet the run was.
    results["load_average_start"] = os.getloadavg()[0]
    pairs = [(threads, tokens) for threads in THREADS for tokens in TOKENS]
    progress = tqdm(total=len(pairs) + 2, desc="kernel bench", file=sys.stderr)
    for threads in THREADS:
        sessions = {kind: make_session(kind, threads, args.spinning) for kind in ("mlp", "block")}
        check_block_exact(sessions["block"])
        for tokens in TOKENS:
            timings = alternate_timings(sessions, {"X": inputs(tokens)}, args.seconds, empty_feed={"X": inputs(0)},
                                        settle=POOL_SETTLE_SECONDS if threads > 1 else 0.0)
            record_timings(results, timings, "mlp", "block", f"{tokens}_{threads}t", "speedup")
            progress.update()
    for kind in ("mlp", "block"):
        results[f"peak_rss_mb_{kind}_2048_1t"] = peak_rss_mb(kind, 2048, 1)
        progress.update()
    progress.close()
    for tokens in TOKENS:  # time on 2 threads over time on 1 (0.5 = perfect scaling)
        results[f"thread_ratio_{tokens}"] = results[f"block_ms_{tokens}_2t"] / results[f"block_ms_{tokens}_1t"]

    print(f"WeightlessBlock kernel vs dense MLP, onnxruntime {ort.__version__}, {results['cpu']}, ISA {results['isa']}")
    print(f"{'tokens':>7} {'threads':>7} {'MLP ms':>9} {'block ms':>9} {'speed-up':>9}   (medians net of a run's fixed "
          "cost; fastest runs: ratio)")
    for threads, tokens in pairs:
        key = f"{tokens}_{threads}t"
        print(f"{tokens:>7} {threads:>7} {results[f'mlp_ms_{key}']:>9.4f} {results[f'block_ms_{key}']:>9.4f} "
              f"{results[f'speedup_{key}']:>8.1f}x   ({results[f'mlp_min_ms_{key}']:.4f} / "
              f"{results[f'block_min_ms_{key}']:.4f} ms: {results[f'speedup_of_min_{key}']:.1f}x)")
    print("block time on 2 threads / 1 thread: " + ", ".join(
        f"{tokens} tokens {results[f'thread_ratio_{tokens}']:.2f}" for tokens in TOKENS))
    print(f"peak RSS growth, 2048 tokens, 1 thread: MLP {results['peak_rss_mb_mlp_2048_1t']:.1f} MB, "
          f"block {results['peak_rss_mb_block_2048_1t']:.1f} MB")
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

"""The kernel under concurrency: one session run from 8 threads at once, and 8 sessions in one process.

Every run's output is compared bit for bit with the numpy reference (`evaluate`) on inputs with the
spec's edge cases (exact rounding ties, saturation, NaN, +-inf, denormals), over token counts from 1 to
1,000 (one tile, several tiles, ragged tails). The process's resident memory (RSS) is sampled as the
runs go: after a warm-up (the first tenth) it must stay flat - a leak per run shows as growth.

    python bench/concurrency.py [--runs 10000] [--json bench/results/concurrency.json [--force]]

tests/test_concurrency.py runs the same scenarios with a modest count.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Token counts of the inputs (one tile and less, tile edges, several tiles with ragged tails).
TOKENS = (1, 2, 7, 63, 64, 65, 130, 257, 600, 1000)
THREADS = 8
#: RSS may move by this much after warm-up (allocator noise) without counting as growth.
RSS_TOLERANCE_MB = 4.0


def block():
    """A mid-size block (96 -> 48, two LUT layers, LUT6): several tiles per run, both evaluator paths."""
    from quweit.custom_ops import random_params

    return random_params(np.random.default_rng(11), in_features=96, out_features=48, thresholds_per_feature=6,
                         lut_inputs=6, layer_sizes=(256, 48 * 4), input_bits=10)


def edge_inputs(params, tokens: int, seed: int) -> np.ndarray:
    """`[tokens, D_in]` float32 with exact ties, saturation, NaN, +-inf and denormals mixed in."""
    rng = np.random.default_rng(seed)
    shape = (tokens, params.in_features)
    span = float(params.qmax + 1)
    units = rng.uniform(-1.5 * span, 1.5 * span, size=shape)
    units = np.where(rng.random(shape) < 0.3, np.floor(units) + 0.5, units)
    x = (units / params.input_scale.astype(np.float64)).astype(np.float32)
    special = rng.random(shape) < 0.1
    x[special] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, 3.4e38],
                                     dtype=np.float32), size=int(special.sum()))
    return x


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scenario(name: str, runs: int, *, threads: int = THREADS, intra_op: int = 1, samples: int = 20) -> dict:
    """`runs` runs from `threads` Python threads, on one shared session (`shared`) or one session per
    thread (`sessions`); returns mismatches and the RSS samples."""
    from quweit.custom_ops import evaluate, make_block_model
    from quweit.onnxio import make_session

    params = block()
    model = make_block_model(params, ("tokens",)).SerializeToString()
    cases = [edge_inputs(params, tokens, seed=k) for k, tokens in enumerate(TOKENS)]
    expected = [evaluate(params, x).view(np.uint32) for x in cases]
    count = 1 if name == "shared" else threads
    sessions = [make_session(model, kernel=True, threads=intra_op) for _ in range(count)]
    next_run, mismatches, failures = [0], [0], []
    lock = threading.Lock()
    rss: list[tuple[int, float]] = [(0, rss_mb())]
    every = max(1, runs // samples)

    def worker(k: int) -> None:
        session = sessions[k % count]
        while True:
            with lock:
                index = next_run[0]
                if index >= runs:
                    return
                next_run[0] += 1
            case = (index * 7 + k) % len(cases)
            try:
                y = session.run(None, {"X": cases[case]})[0]
                wrong = not np.array_equal(y.view(np.uint32), expected[case])
            except Exception as err:  # noqa: BLE001  (reported: a concurrent run must not fail)
                wrong = True
                failures.append(f"{type(err).__name__}: {err}"[:300])
            with lock:
                mismatches[0] += wrong
                if (index + 1) % every == 0:
                    rss.append((index + 1, rss_mb()))

    started = time.monotonic()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.monotonic() - started
    rss.sort()
    warm = [mb for done, mb in rss if done >= runs // 10]
    growth = (max(warm) - warm[0]) if warm else 0.0
    return {"scenario": name, "sessions": count, "threads": threads, "intra_op_threads": intra_op, "runs": runs,
            "mismatches": mismatches[0], "failures": failures[:5], "seconds": round(seconds, 1),
            "rss_mb": [[done, round(mb, 1)] for done, mb in rss], "rss_growth_after_warmup_mb": round(growth, 1),
            "rss_flat": growth <= RSS_TOLERANCE_MB}


def main(argv=None) -> dict:
    from _common import finish, refuse_to_clobber

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000, help="runs per scenario")
    p.add_argument("--json")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    results = {"command": " ".join(["python", "bench/concurrency.py", *(argv if argv is not None else sys.argv[1:])]),
               "load_average_start": os.getloadavg()[0], "tokens": list(TOKENS),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "rss_tolerance_mb": RSS_TOLERANCE_MB}
    for name, intra_op in (("shared", 1), ("shared", 2), ("sessions", 1)):
        outcome = run_scenario(name, args.runs, intra_op=intra_op)
        results[f"{name}_{intra_op}t"] = outcome
        print(f"{name:8s} {outcome['sessions']} session(s) x {THREADS} threads, {intra_op} intra-op: "
              f"{outcome['runs']} runs in {outcome['seconds']} s, {outcome['mismatches']} mismatches, "
              f"RSS {outcome['rss_mb'][0][1]} -> {outcome['rss_mb'][-1][1]} MB "
              f"(growth after warm-up {outcome['rss_growth_after_warmup_mb']} MB)", flush=True)
    scenarios = [v for v in results.values() if isinstance(v, dict) and "mismatches" in v]
    results["mismatches"] = sum(s["mismatches"] for s in scenarios)
    results["rss_flat"] = all(s["rss_flat"] for s in scenarios)
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome["mismatches"] == 0 and outcome["rss_flat"] else 1)

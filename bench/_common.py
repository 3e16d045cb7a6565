"""What every benchmark shares: interleaved timing (so machine noise hits both sides alike) and
atomic JSON results (through the I/O layer's one writer)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
from quweit.onnxio import BadInputError, write_json
from quweit.onnxio import refuse_to_clobber as io_refuse

#: Sleep before each turn of a session with an intra-op pool (alternate_timings): longer than onnxruntime's
#: idle pool threads spin after a run.
POOL_SETTLE_SECONDS = 0.1


def alternate_timings(sessions: dict, feed: dict, seconds: float, *, empty_feed: dict | None = None,
                      settle: float = 0.0) -> dict[str, float]:
    """Median seconds per run of each session (and `<kind>_min`), runs interleaved for `seconds` in total,
    at least 5 runs each, after 3 warm-up runs.

    With `empty_feed` (the same inputs with no tokens) each run is followed by one on it, and
    `<kind>_fixed` is the median of those: what a run costs that computes nothing (Python, onnxruntime's
    dispatch of every node, output allocation). `record_timings` subtracts it, so that a few microseconds
    of compute are not hidden under a run's fixed cost; the ratio is then that of the ops themselves.

    With `settle` > 0 (sessions with an intra-op thread pool) the sessions take turns in rounds of
    `seconds / 8` each instead of run by run, and each turn starts after `settle` seconds of sleep and one
    untimed run: onnxruntime's idle pool threads spin for tens of milliseconds after a run (measured
    here: about 40 ms of CPU), so run-by-run alternation made each session's pool take a core from the
    other's, and two threads looked no faster than one."""
    feeds = {"": feed} | ({"_fixed": empty_feed} if empty_feed is not None else {})
    for session in sessions.values():
        for chosen in feeds.values():
            for _ in range(3):
                session.run(None, chosen)
    times = {kind + suffix: [] for kind in sessions for suffix in feeds}
    turn = seconds / 8 if settle > 0 else 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(t) for t in times.values()) < 5:
        for kind, session in sessions.items():
            if settle > 0:
                time.sleep(settle)
                session.run(None, feed)
            turn_start = time.perf_counter()
            while True:
                for suffix, chosen in feeds.items():
                    t0 = time.perf_counter()
                    session.run(None, chosen)
                    times[kind + suffix].append(time.perf_counter() - t0)
                if time.perf_counter() - turn_start >= turn:
                    break
    return {kind: float(np.median(t)) for kind, t in times.items()} | {
        f"{kind}_min": float(np.min(t)) for kind, t in times.items()} | {
        f"{kind}_runs": len(t) for kind, t in times.items() if not kind.endswith("_fixed")}


def record_timings(results: dict, timings: dict, baseline: str, candidate: str, key: str, ratio: str) -> None:
    """Store `alternate_timings` output as ms per side and baseline/candidate ratios under `key`.

    The ratio of medians is the headline; the ratio of fastest runs is what a quiet machine gives. When
    fixed costs were measured, times are net of them (`<kind>_run_ms_<key>` keeps the whole run)."""
    net = {}
    for kind in (baseline, candidate):
        fixed, fixed_min = timings.get(f"{kind}_fixed", 0.0), timings.get(f"{kind}_fixed_min", 0.0)
        net[kind] = timings[kind] - fixed
        net[f"{kind}_min"] = timings[f"{kind}_min"] - fixed_min
        results[f"{kind}_ms_{key}"] = net[kind] * 1e3
        results[f"{kind}_min_ms_{key}"] = net[f"{kind}_min"] * 1e3
        if f"{kind}_fixed" in timings:
            results[f"{kind}_run_ms_{key}"] = timings[kind] * 1e3
            results[f"{kind}_fixed_ms_{key}"] = fixed * 1e3
        if f"{kind}_runs" in timings:
            results[f"{kind}_runs_{key}"] = timings[f"{kind}_runs"]
    results[f"{ratio}_{key}"] = net[baseline] / net[candidate]
    results[f"{ratio}_of_min_{key}"] = net[f"{baseline}_min"] / net[f"{candidate}_min"]


def git_commit() -> str:
    """The checkout's commit (with `-dirty` when tracked files differ from it), or `unknown` outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def refuse_to_clobber(path: str, force: bool) -> None:
    """Checked before a long run (and again by the writer at the end)."""
    try:
        io_refuse([path], force)
    except BadInputError as err:
        raise SystemExit(f"error: {err}") from None


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the options `finish` reads (`--json`, `--force`); description: `doc`'s
    first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    return parser


def finish(results: dict, json_path: str | None, force: bool) -> None:
    """Record and print the machine load at the end (noise is part of the result) and the code's commit,
    then save."""
    results["load_average_end"] = os.getloadavg()[0]
    results.setdefault("git_commit", git_commit())
    print(f"load average (1 min) {results['load_average_start']:.1f} at start, {results['load_average_end']:.1f} "
          f"at end on {os.cpu_count()} cores")
    if json_path:
        refuse_to_clobber(json_path, force)
        write_json(json_path, results, force=force, sort_keys=True)
        print(f"wrote {json_path}")

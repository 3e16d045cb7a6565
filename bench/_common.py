"""What every benchmark shares: interleaved timing (so machine noise hits both sides alike) and
atomic JSON results (through the I/O layer's one writer)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from quweit.onnxio import BadInputError, write_json
from quweit.onnxio import refuse_to_clobber as io_refuse


def alternate_timings(sessions: dict, feed: dict, seconds: float) -> dict[str, float]:
    """Median seconds per run of each session (and `<kind>_min`), runs interleaved for `seconds` in total,
    at least 5 runs each, after 3 warm-up runs."""
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times = {kind: [] for kind in sessions}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(t) for t in times.values()) < 5:
        for kind, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feed)
            times[kind].append(time.perf_counter() - t0)
    return {kind: float(np.median(t)) for kind, t in times.items()} | {
        f"{kind}_min": float(np.min(t)) for kind, t in times.items()}


def record_timings(results: dict, timings: dict, baseline: str, candidate: str, key: str, ratio: str) -> None:
    """Store `alternate_timings` output as ms per side and baseline/candidate ratios under `key`.

    The ratio of medians is the headline; the ratio of fastest runs is what a quiet machine gives.
    """
    for kind in (baseline, candidate):
        results[f"{kind}_ms_{key}"] = timings[kind] * 1e3
        results[f"{kind}_min_ms_{key}"] = timings[f"{kind}_min"] * 1e3
    results[f"{ratio}_{key}"] = timings[baseline] / timings[candidate]
    results[f"{ratio}_of_min_{key}"] = timings[f"{baseline}_min"] / timings[f"{candidate}_min"]


def git_commit() -> str:
    """The checked-out commit, read from the repository's files (no `git` program: a result records it
    wherever the benchmark runs); "unknown" outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: ".git" names its folder, whose "commondir" holds the shared refs
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        for folder in (git, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return "unknown"


def refuse_to_clobber(path: str, force: bool) -> None:
    """Checked before a long run (and again by the writer at the end)."""
    try:
        io_refuse([path], force)
    except BadInputError as err:
        raise SystemExit(f"error: {err}") from None


def finish(results: dict, json_path: str | None, force: bool) -> None:
    """Record and print the machine load at the end (noise is part of the result), then save."""
    results["load_average_end"] = os.getloadavg()[0]
    print(f"load average (1 min) {results['load_average_start']:.1f} at start, {results['load_average_end']:.1f} "
          f"at end on {os.cpu_count()} cores")
    if json_path:
        refuse_to_clobber(json_path, force)
        write_json(json_path, results, force=force, sort_keys=True)
        print(f"wrote {json_path}")

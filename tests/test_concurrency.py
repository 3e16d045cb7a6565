"""The kernel under concurrency (bench/concurrency.py's scenarios, with a modest count): one session run
from 8 threads at once (1 and 2 intra-op threads) and 8 sessions in one process give the reference's bits
on every run, and the process's memory stays flat after warm-up. bench/results/concurrency.json has the
full count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "concurrency.py"


def _bench():
    spec = importlib.util.spec_from_file_location("quweit_bench_concurrency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scenario, intra_op", [("shared", 1), ("shared", 2), ("sessions", 1)])
def test_concurrent_runs_are_exact_and_memory_stays_flat(scenario, intra_op):
    bench = _bench()
    outcome = bench.run_scenario(scenario, 3000, intra_op=intra_op)
    assert outcome["failures"] == [] and outcome["mismatches"] == 0, outcome
    assert outcome["sessions"] == (1 if scenario == "shared" else bench.THREADS)
    assert outcome["rss_growth_after_warmup_mb"] <= bench.RSS_TOLERANCE_MB, outcome["rss_mb"]

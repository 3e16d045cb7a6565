"""A fixed-seed subset of bench/fuzz.py (300 mutated real models: structure, WeightlessBlock parameters,
bytes) through quweit-convert and quweit-compile in-process (every 20th case also as commands), the
ASan+UBSan kernel and the decomposition: no crash, traceback, hang, undocumented exit code, partial output,
modified input or mismatch with the reference. The full run (10,000 cases) is quoted in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ("crashes", "tracebacks", "hangs", "bad_exit_codes", "partial_outputs", "inputs_modified", "mismatches")


def test_fuzz_subset_finds_nothing(tmp_path):
    out = tmp_path / "fuzz.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--cases", "300", "--seed", "20261130", "--small",
         "--corpus", str(tmp_path / "corpus"), "--json", str(out), "--no-progress", "--show", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert report["cases"] == 300
    found = {k: report[k] for k in FINDINGS if report[k]}
    assert not found, f"{found}\n{result.stdout[-4000:]}"

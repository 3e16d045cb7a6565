"""What every example's result file carries besides its numbers (machine, commit, command), and writing it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(script: str, args, skip: tuple[str, ...] = ("out", "results")) -> dict[str, str]:
    """Machine, torch threads, git commit and the full command (every option spelled out)."""
    import torch

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        "commit": commit(),
        "command": f"python examples/{script} " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in skip),
    }


def write(path: Path, results: dict) -> None:
    """Through the one atomic writer (replacing the previous result)."""
    from quweit.onnxio import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results, force=True)
    print(f"results in {path}")

"""What `quweit-convert` costs beyond fitting, on Llama-style decoders of 8, 16 and 32 layers.

Each decoder has random weights (hidden 576, intermediate 1536, SwiGLU, 9 heads / 3 key-value heads,
vocabulary 49,152: SmolLM2-135M's shapes) and is exported by torch's dynamo exporter (weights in a side
file). It is converted by the `quweit-convert` command in a fresh process with real-shaped calibration:
`--samples` sequences of `--tokens` token ids, right-padded to random lengths (an attention mask of
zeros at the end), as a tokenizer gives them. Per size it reports

- `seconds`: the command's wall time (start, load, detection, calibration passes, fitting, rewriting,
  saving);
- `seconds_fitting`: the time inside the block fits (the closed-form fit, from the report);
- `overhead_s_per_mlp`: (seconds - seconds_fitting) / MLPs;
- `peak_rss_over_model`: the command's peak resident memory (getrusage of the child) / the model's bytes
  (.onnx + .data).

The 32-layer numbers are also top-level keys (`overhead_s_per_mlp_32`, `peak_rss_over_model_32`).

    python bench/convert.py [--json PATH [--force]] [--layers 8 16 32] [--samples 16] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import finish, refuse_to_clobber

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 576, 1536, 9, 3, 49152
LAYERS = (8, 16, 32)


def export_decoder(layers: int, path: Path) -> None:
    """The random-weight decoder, exported by the dynamo exporter (dynamic batch and sequence)."""
    import warnings

    import torch
    from transformers import LlamaConfig, LlamaModel

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(layers)
            config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                 num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                 max_position_embeddings=2048)
            self.model = LlamaModel(config)

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = {"input_ids": torch.randint(0, VOCAB, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.int64)}
    batch, sequence = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=2048)
    shapes = {name: {0: batch, 1: sequence} for name in example}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoder().eval(), (), str(path), kwargs=example, input_names=list(example),
                          output_names=["last_hidden_state"], dynamic_shapes=shapes, opset_version=18, dynamo=True,
                          external_data=True, verbose=False)


def calibration(samples: int, tokens: int, seed: int = 0) -> dict:
    """Token ids with right padding to random lengths between half and all of `tokens`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(samples, tokens)).astype(np.int64)
    lengths = rng.integers(tokens // 2, tokens + 1, size=samples)
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}


def measure(layers: int, folder: Path, samples: int, tokens: int, extra: list[str]) -> dict:
    from quweit.onnxio import write_npz

    model = folder / f"decoder{layers}.onnx"
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, "--export-only", str(layers), str(model)], check=True)
    export_seconds = time.monotonic() - started
    write_npz(folder / "calib.npz", calibration(samples, tokens), force=True)
    model_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(model.name))
    out, report = folder / f"decoder{layers}.quweit.onnx", folder / f"report{layers}.json"
    command = [sys.executable, "-m", "quweit.converter.cli", str(model), "--calib", str(folder / "calib.npz"),
               "-o", str(out), "--report", str(report), "--quiet", "--force", *extra]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    stderr = child.stderr.read()
    child.stderr.close()
    if status:
        raise SystemExit(f"error: quweit-convert failed on {layers} layers (status {status}):\n{stderr[-3000:]}")
    data = json.loads(report.read_text())
    mlps = data["mlps_replaced"]
    result = {
        "layers": layers, "mlps": mlps, "model_bytes": model_bytes, "export_seconds": round(export_seconds, 1),
        "seconds": round(seconds, 2), "seconds_in_command_report": data["seconds"],
        "seconds_fitting": data["seconds_fitting"], "peak_rss_bytes": usage.ru_maxrss * 1024,
        "fidelity": data["fidelity"], "calibration_tokens": int(calibration(samples, tokens)["attention_mask"].sum()),
    }
    result["overhead_s_per_mlp"] = round((seconds - data["seconds_fitting"]) / mlps, 3)
    result["peak_rss_over_model"] = round(result["peak_rss_bytes"] / model_bytes, 3)
    for path in folder.iterdir():  # the next size needs the disk space
        path.unlink()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    parser.add_argument("--samples", type=int, default=16, help="calibration sequences")
    parser.add_argument("--tokens", type=int, default=128, help="calibration sequence length (padded)")
    parser.add_argument("--convert-args", default="", help="extra quweit-convert arguments (quoted)")
    parser.add_argument("--export-only", nargs=2, metavar=("LAYERS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_only:
        export_decoder(int(args.export_only[0]), Path(args.export_only[1]))
        return {}
    if args.json:
        refuse_to_clobber(args.json, args.force)
    from tqdm import tqdm

    results: dict = {
        "command": "python bench/convert.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": f"random-weight Llama decoder: hidden {HIDDEN}, intermediate {INTERMEDIATE} (SwiGLU), {HEADS} heads, "
                 f"{KV_HEADS} kv heads, vocabulary {VOCAB}; torch dynamo export with external data",
        "calibration": f"{args.samples} sequences x {args.tokens} tokens, right-padded to random lengths",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "git_commit": _commit(),
        "load_average_start": os.getloadavg()[0], "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="quweit-bench-convert-") as folder:
        for layers in tqdm(args.layers, desc="convert bench", unit="size", file=sys.stderr):
            row = measure(layers, Path(folder), args.samples, args.tokens, args.convert_args.split())
            results["sizes"].append(row)
            print(f"{layers:>3} layers: {row['seconds']:7.1f} s ({row['seconds_fitting']:.1f} s fitting), "
                  f"{row['overhead_s_per_mlp']:.3f} s/MLP outside fitting, peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
                  f" = {row['peak_rss_over_model']:.2f}x the model ({row['model_bytes'] / 2**20:.0f} MiB)", flush=True)
    for row in results["sizes"]:
        if row["layers"] == 32:
            results["overhead_s_per_mlp_32"] = row["overhead_s_per_mlp"]
            results["peak_rss_over_model_32"] = row["peak_rss_over_model"]
    finish(results, args.json, args.force)
    return results


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()

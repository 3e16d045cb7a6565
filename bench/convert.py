"""What `quweit-convert` costs beyond fitting, on Llama-style decoders of 8, 16 and 32 layers.

Each decoder has random weights (hidden 576, intermediate 1536, SwiGLU, 9 heads / 3 key-value heads,
vocabulary 49,152: SmolLM2-135M's shapes) and is exported by torch's dynamo exporter (weights in a side
file). It is converted by the `quweit-convert` command in a fresh process with real-shaped calibration:
`--samples` sequences of `--tokens` token ids, right-padded to random lengths (an attention mask of
zeros at the end), as a tokenizer gives them. Per size it reports

- `seconds`: the command's wall time (start, load, detection, calibration passes, fitting, rewriting,
  saving), and `cpu_seconds` (all its threads);
- `seconds_fitting`: the time inside the block fits (the closed-form fit, from the report);
- `overhead_s_per_mlp`: (seconds - seconds_fitting) / MLPs (and the same in CPU seconds, which a busy
  machine disturbs less);
- `peak_rss_over_model`: the command's peak resident memory (getrusage of the child) / the model's bytes
  (.onnx + .data).

`conversion` is `quweit-convert --no-sensitivity` (the conversion itself); `with_sensitivity` adds the
per-MLP sensitivity table, which runs the held-out data from every MLP to the end (about MLPs/2 extra
forward passes: quadratic in the MLP count), on the sizes in `--sensitivity-layers`. The 32-layer
conversion's numbers are also top-level keys (`overhead_s_per_mlp_32`, `peak_rss_over_model_32`).

    python bench/convert.py [--json PATH [--force]] [--layers 8 16 32] [--samples 16] [--tokens 128]
                            [--sensitivity-layers 8 16]
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

from _common import bench_parser, finish, git_commit, refuse_to_clobber

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


def measure(layers: int, folder: Path, samples: int, tokens: int, variants: dict[str, list[str]]) -> dict:
    """Export the `layers`-layer decoder once and convert it once per variant (extra command arguments)."""
    from quweit.onnxio import write_npz

    model = folder / f"decoder{layers}.onnx"
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, "--export-only", str(layers), str(model)], check=True)
    export_seconds = time.monotonic() - started
    calib = calibration(samples, tokens)
    write_npz(folder / "calib.npz", calib, force=True)
    model_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(model.name))
    row = {"layers": layers, "model_bytes": model_bytes, "export_seconds": round(export_seconds, 1),
           "calibration_tokens": int(calib["attention_mask"].sum())}
    for name, extra in variants.items():
        row[name] = convert_once(model, folder, model_bytes, extra)
    for path in folder.iterdir():  # the next size needs the disk space
        path.unlink()
    return row


def convert_once(model: Path, folder: Path, model_bytes: int, extra: list[str]) -> dict:
    """Run `quweit-convert` in a fresh process: wall time, CPU time and peak RSS from the operating system,
    fitting time from its report."""
    out, report = folder / "converted.onnx", folder / "report.json"
    command = [sys.executable, "-m", "quweit.converter.cli", str(model), "--calib", str(folder / "calib.npz"),
               "-o", str(out), "--report", str(report), "--quiet", "--force", *extra]
    load = os.getloadavg()[0]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    stderr = child.stderr.read()
    child.stderr.close()
    if status:
        raise SystemExit(f"error: {' '.join(command)} failed (status {status}):\n{stderr[-3000:]}")
    data = json.loads(report.read_text())
    mlps = data["mlps_replaced"]
    result = {
        "arguments": extra, "mlps": mlps, "seconds": round(seconds, 2), "seconds_fitting": data["seconds_fitting"],
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "cpu_seconds_fitting": data["cpu_seconds_fitting"],
        "peak_rss_bytes": usage.ru_maxrss * 1024, "fidelity": data["fidelity"],
        "load_average_before": load, "load_average_after": os.getloadavg()[0],
    }
    result["overhead_s_per_mlp"] = round((seconds - data["seconds_fitting"]) / mlps, 3)
    result["overhead_cpu_s_per_mlp"] = round((result["cpu_seconds"] - data["cpu_seconds_fitting"]) / mlps, 3)
    result["peak_rss_over_model"] = round(result["peak_rss_bytes"] / model_bytes, 3)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    parser.add_argument("--samples", type=int, default=16, help="calibration sequences")
    parser.add_argument("--tokens", type=int, default=128, help="calibration sequence length (padded)")
    parser.add_argument("--sensitivity-layers", type=int, nargs="*", default=[8, 16],
                        help="sizes also converted with the per-MLP sensitivity table (quadratic in the MLPs)")
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
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "git_commit": git_commit(),
        "load_average_start": os.getloadavg()[0], "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="quweit-bench-convert-") as folder:
        for layers in tqdm(args.layers, desc="convert bench", unit="size", file=sys.stderr):
            variants = {"conversion": ["--no-sensitivity"]}
            if layers in args.sensitivity_layers:
                variants["with_sensitivity"] = []
            row = measure(layers, Path(folder), args.samples, args.tokens, variants)
            results["sizes"].append(row)
            for name in variants:
                run = row[name]
                print(f"{layers:>3} layers, {name}: {run['seconds']:7.1f} s ({run['seconds_fitting']:.1f} s fitting), "
                      f"{run['overhead_s_per_mlp']:.3f} s/MLP outside fitting ({run['overhead_cpu_s_per_mlp']:.3f} CPU s), "
                      f"peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB = {run['peak_rss_over_model']:.2f}x the model "
                      f"({row['model_bytes'] / 2**20:.0f} MiB), load {run['load_average_before']:.1f}", flush=True)
    for row in results["sizes"]:
        if row["layers"] == 32:
            results["overhead_s_per_mlp_32"] = row["conversion"]["overhead_s_per_mlp"]
            results["peak_rss_over_model_32"] = row["conversion"]["peak_rss_over_model"]
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

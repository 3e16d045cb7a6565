"""Per-token decode latency of a Llama-style decoder with every MLP converted, against the original, in
onnxruntime, next to the limit that replacing only the MLPs allows (Amdahl).

The decoder is built in code with random weights (SmolLM2-135M's shape: hidden 576, SwiGLU MLPs of
1536, 30 layers, 9 query / 3 key-value heads, RMSNorm, rotary positions), one decode step (1 new token)
with a KV cache: past keys/values are inputs, the extended ones outputs. It is exported to ONNX (torch's
exporter), and `quweit.converter.convert.replace_mlps` replaces every SwiGLU MLP by a block of the
default structure (random valid parameters: latency does not depend on fitted values; the blocks run on
the kernel only). The MLPs' share of the original's time is measured with a third export whose MLPs
cost nothing: each layer's `h + mlp(norm(h))` becomes `h + norm(h)`, keeping exactly what the converter
keeps (the norm and the residual addition): limit = original / no-MLP time, the speed-up a
converted model would reach if its blocks cost nothing. The three sessions' runs alternate, medians are
reported, for 1 and 2 intra-op threads. The vocabulary projection (lm_head) is not part of the stack.

    python bench/decode.py [--json PATH [--force]] [--seconds S] [--past N] [--layers L]
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from _common import (
    POOL_SETTLE_SECONDS,
    alternate_timings,
    bench_parser,
    finish,
    record_timings,
    refuse_to_clobber,
)
from model import kernel_only
from quweit.onnxio import load_model, make_session

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 576, 1536, 9, 3
HEAD_DIM = HIDDEN // HEADS
VOCAB = 2048  # the embedding lookup reads one row whatever the vocabulary size


def decoder(layers: int, with_mlps: bool, seed: int = 0):
    """The decoder as a torch module: forward(input_ids [1, 1], position_ids [1, 1], *past) ->
    (hidden [1, 1, HIDDEN], *present), past/present keys and values [1, KV_HEADS, length, HEAD_DIM]."""
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(HIDDEN))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_norm, self.post_norm = RMSNorm(), RMSNorm()
            self.q = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
            self.k = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.v = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.o = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
            self.gate = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
            self.up = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
            self.down = nn.Linear(INTERMEDIATE, HIDDEN, bias=False)

        def forward(self, h, cos, sin, past_k, past_v):
            x = self.input_norm(h)
            q = rotate(self.q(x).view(1, 1, HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
            k = rotate(self.k(x).view(1, 1, KV_HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
            v = self.v(x).view(1, 1, KV_HEADS, HEAD_DIM).transpose(1, 2)
            k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
            length = k.shape[2]
            kk = k[:, :, None].expand(1, KV_HEADS, HEADS // KV_HEADS, length, HEAD_DIM).reshape(1, HEADS, length, HEAD_DIM)
            vv = v[:, :, None].expand(1, KV_HEADS, HEADS // KV_HEADS, length, HEAD_DIM).reshape(1, HEADS, length, HEAD_DIM)
            weights = torch.softmax(q @ kk.transpose(2, 3) / HEAD_DIM**0.5, dim=-1)
            h = h + self.o((weights @ vv).transpose(1, 2).reshape(1, 1, HIDDEN))
            x = self.post_norm(h)
            h = h + (self.down(nn.functional.silu(self.gate(x)) * self.up(x)) if with_mlps else x)
            return h, k, v

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = RMSNorm()
            self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))

        def forward(self, input_ids, position_ids, *past):
            freqs = position_ids.float()[..., None] * self.inv_freq  # [1, 1, HEAD_DIM / 2]
            emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [1, 1, 1, HEAD_DIM]
            cos, sin = emb.cos(), emb.sin()
            h, present = self.embed(input_ids), []
            for i, layer in enumerate(self.layers):
                h, k, v = layer(h, cos, sin, past[2 * i], past[2 * i + 1])
                present += [k, v]
            return (self.norm(h), *present)

    torch.manual_seed(seed)
    return Decoder().eval()


def input_names(layers: int) -> list[str]:
    return ["input_ids", "position_ids"] + [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def export(layers: int, with_mlps: bool, path: str, past: int) -> onnx.ModelProto:
    import torch

    model = decoder(layers, with_mlps)
    names = input_names(layers)
    outputs = ["hidden"] + [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    example = feeds(layers, past)
    args = tuple(torch.from_numpy(example[name]) for name in names)
    axes = {name: {2: "past"} for name in names[2:]} | {name: {2: "length"} for name in outputs[1:]}
    with torch.no_grad():
        torch.onnx.export(model, args, path, input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=18, dynamo=False)
    return load_model(path)


def feeds(layers: int, past: int) -> dict[str, np.ndarray]:
    """One decode step: token 5 at position `past`, random keys/values for the `past` earlier tokens."""
    rng = np.random.default_rng(past)
    result = {"input_ids": np.array([[5]], dtype=np.int64), "position_ids": np.array([[past]], dtype=np.int64)}
    for name in input_names(layers)[2:]:
        result[name] = rng.standard_normal((1, KV_HEADS, past, HEAD_DIM)).astype(np.float32)
    return result


def sessions(models: dict[str, onnx.ModelProto], threads: int, spinning: int) -> dict[str, ort.InferenceSession]:
    def options() -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.add_session_config_entry("session.intra_op.allow_spinning", str(spinning))
        return o

    return {kind: make_session(model, kernel=kind == "converted", threads=threads, options=options())
            for kind, model in models.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per thread count")
    parser.add_argument("--past", type=int, default=128, help="tokens already in the KV cache")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers")
    parser.add_argument("--spinning", type=int, choices=(0, 1), default=1,
                        help="onnxruntime's session.intra_op.allow_spinning for every session (default 1, its own)")
    args = parser.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    if args.past < 1 or args.layers < 1:
        raise SystemExit(f"error: --past and --layers must be >= 1, got {args.past} and {args.layers}")

    from quweit.converter.convert import replace_mlps
    from tqdm import tqdm

    progress = tqdm(total=5, desc="decode bench", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="quweit-decode-") as workdir:
        original = export(args.layers, True, os.path.join(workdir, "decoder.onnx"), args.past)
        progress.update()
        no_mlps = export(args.layers, False, os.path.join(workdir, "decoder_no_mlps.onnx"), args.past)
        progress.update()
    converted, report = replace_mlps(original)
    if report.get("mlps_replaced") != args.layers or report.get("mlps_found") != args.layers:
        raise SystemExit(f"error: replaced {report.get('mlps_replaced')}/{report.get('mlps_found')} MLPs; "
                         f"expected all {args.layers}")
    models = {"original": original, "converted": kernel_only(converted), "no_mlps": no_mlps}
    progress.update()
    feed = feeds(args.layers, args.past)
    results: dict = {
        "command": "python bench/decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "onnxruntime": ort.__version__, "cores": os.cpu_count(),
        "decoder": f"Llama-style, {args.layers} layers, hidden {HIDDEN}, SwiGLU {INTERMEDIATE}, {HEADS} query / "
                   f"{KV_HEADS} key-value heads, random weights (seed 0), no lm_head",
        "past_tokens": args.past, "new_tokens": 1, "mlps_replaced": report["mlps_replaced"],
        "block": f"default_config({HIDDEN}, {HIDDEN})", "allow_spinning": args.spinning,
        "seconds_per_thread_count": args.seconds, "load_average_start": os.getloadavg()[0],
    }
    for threads in (1, 2):
        timings = alternate_timings(sessions(models, threads, args.spinning), feed, args.seconds,
                                    settle=POOL_SETTLE_SECONDS if threads > 1 else 0.0)
        key = f"{threads}t"
        record_timings(results, timings, "original", "converted", key, "decode_speedup")
        record_timings(results, timings, "original", "no_mlps", key, "decode_amdahl_limit")
        results[f"decode_mlp_share_{key}"] = 1.0 - 1.0 / results[f"decode_amdahl_limit_{key}"]
        results[f"decode_fraction_of_limit_{key}"] = results[f"decode_speedup_{key}"] / results[f"decode_amdahl_limit_{key}"]
        results[f"block_ms_per_layer_{key}"] = (results[f"converted_ms_{key}"] - results[f"no_mlps_ms_{key}"]) / args.layers
        results[f"mlp_ms_per_layer_{key}"] = (results[f"original_ms_{key}"] - results[f"no_mlps_ms_{key}"]) / args.layers
        progress.update()
    progress.close()

    print(f"decode step (1 new token, {args.past} cached), {args.layers}-layer Llama-style decoder, onnxruntime "
          f"{ort.__version__}, {report['mlps_replaced']}/{report['mlps_found']} MLPs replaced")
    print(f"{'threads':>7} {'original':>9} {'converted':>10} {'no MLPs':>8} {'MLP share':>10} {'limit':>7} "
          f"{'speed-up':>9} {'of limit':>9}   (median ms per token)")
    for threads in (1, 2):
        k = f"{threads}t"
        print(f"{threads:>7} {results[f'original_ms_{k}']:>9.2f} {results[f'converted_ms_{k}']:>10.2f} "
              f"{results[f'no_mlps_ms_{k}']:>8.2f} {results[f'decode_mlp_share_{k}']:>10.1%} "
              f"{results[f'decode_amdahl_limit_{k}']:>6.2f}x {results[f'decode_speedup_{k}']:>8.2f}x "
              f"{results[f'decode_fraction_of_limit_{k}']:>9.1%}")
    print(f"per layer, 1 thread: dense MLP {results['mlp_ms_per_layer_1t'] * 1e3:.1f} us, block "
          f"{results['block_ms_per_layer_1t'] * 1e3:.1f} us")
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

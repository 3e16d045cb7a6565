"""Training step time of a WeightlessBlock against the dense MLP it replaces, measured in one run.

MiniLM size: dense 384 -> 1536 -> GELU -> 384 (torch Linear) against a block of the converter's default
structure for 384 -> 384 (`default_config`: LUT6, 8 thresholds per feature, 8 LUTs per output = 3,072
LUTs), both trained by Adam on MSE at 2048 tokens per step; a step is forward + backward + update
(+ table clamp for the block). Variants, each against the dense step of the same kind:

- `train_step_ratio`: block (fused native ops, `custom_ops/fused_training.py`) / dense, input without grad
  (a block fitted alone);
- `train_step_ratio_input_grad`: the same with the input's gradient as well (a block inside a model that is
  trained end to end);
- `staged_ratio`: the per-stage torch path (no native library, `QUWEIT_FUSED_TRAINING=0`) / dense;
- `learnable_mapping_ratio`: `--candidates` (default 4) mapping candidates per slot (per-stage path) / dense.

Steps of all variants alternate round by round (machine noise hits them alike); medians over `--repeats`
rounds after two warm-up rounds. Before timing, the fused and per-stage paths are checked to compute the
same outputs (bit for bit) and gradients (to float32 summation order). On a loaded machine wall times
mostly measure the scheduler, so the process CPU time per step with one thread is recorded as well
(`train_step_cpu_ratio_1t`: block / dense, both single-threaded, interleaved, medians).

    python bench/train_step.py [--json PATH [--force]] [--tokens 2048] [--repeats 15] [--threads 2] [--cpu-repeats 7]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch
from _common import bench_parser, cpu_name, finish, git_commit, refuse_to_clobber
from quweit.custom_ops import default_config, fused_training, random_params
from quweit.custom_ops.torch_block import WeightlessBlock

SEED = 0


class Trainer:
    """One module, its optimizer and data; `step()` runs one timed training step."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, fused: bool = True,
                 input_grad: bool = False) -> None:
        self.module, self.target, self.fused = module, target, fused
        self.x = x.clone().requires_grad_(input_grad)
        self.optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        self.after = getattr(module, "clamp_tables_", None)

    def step(self, clock=time.perf_counter) -> float:
        os.environ[fused_training.ENABLE_ENV] = "1" if self.fused else "0"
        start = clock()
        loss = ((self.module(self.x) - self.target) ** 2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = None
        loss.backward()
        self.optimizer.step()
        if self.after:
            self.after()
        return clock() - start


def block_params(d: int):
    config = default_config(d, d)
    return random_params(np.random.default_rng(SEED), in_features=d, out_features=d,
                         thresholds_per_feature=config.thresholds_per_feature, lut_inputs=config.lut_inputs,
                         layer_sizes=config.layer_sizes(d), input_bits=config.input_bits)


def check_paths_agree(params, x: torch.Tensor, target: torch.Tensor) -> float:
    """Fused and per-stage paths: same outputs bit for bit, gradients equal up to summation order.

    Returns the largest gradient difference relative to the gradient's largest magnitude."""
    results = []
    for fused in (True, False):
        os.environ[fused_training.ENABLE_ENV] = "1" if fused else "0"
        module = WeightlessBlock.from_params(params).train()
        if module.uses_fused_training != fused:
            raise SystemExit("error: the fused training library is not built (pip install -e . builds it)")
        xg = x[:256].clone().requires_grad_()
        y = module(xg)
        ((y - target[:256]) ** 2).mean().backward()
        results.append((y.detach(), [xg.grad] + [p.grad for p in module.parameters()]))
    (y_fused, g_fused), (y_staged, g_staged) = results
    if not torch.equal(y_fused.view(torch.int32), y_staged.view(torch.int32)):
        raise SystemExit("error: fused and per-stage training forwards differ; not benchmarking")
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(g_fused, g_staged))
    if worst > 1e-5:
        raise SystemExit(f"error: fused and per-stage gradients differ by {worst:.2e} (relative); not benchmarking")
    return worst


def main(argv: list[str] | None = None) -> dict:
    p = bench_parser(__doc__)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (each runs every variant once)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the fused ops use as many)")
    p.add_argument("--candidates", type=int, default=4, help="mapping candidates per slot of the learnable variant")
    p.add_argument("--cpu-repeats", type=int, default=7, help="rounds of the 1-thread CPU-time measurement")
    args = p.parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    started = time.perf_counter()
    results: dict = {
        "command": "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_commit": git_commit(), "torch": torch.__version__, "cpu": cpu_name(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "tokens": args.tokens, "seed": SEED, "repeats": args.repeats,
        "dense": f"{args.d_model}->{args.hidden}->GELU->{args.d_model} float32, Adam",
        "block": f"default_config({args.d_model}, {args.d_model}), Adam + clamp_tables_",
        "load_average_start": os.getloadavg()[0],
    }
    d, h = args.d_model, args.hidden
    x = torch.randn(args.tokens, d)
    target = torch.randn(args.tokens, d)
    params = block_params(d)
    results["fused_vs_staged_max_relative_grad_difference"] = check_paths_agree(params, x, target)

    def dense():
        torch.manual_seed(SEED)
        return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, d))

    trainers = {
        "dense": Trainer(dense(), x, target),
        "block": Trainer(WeightlessBlock.from_params(params).train(), x, target),
        "dense_input_grad": Trainer(dense(), x, target, input_grad=True),
        "block_input_grad": Trainer(WeightlessBlock.from_params(params).train(), x, target, input_grad=True),
        "block_staged": Trainer(WeightlessBlock.from_params(params).train(), x, target, fused=False),
        "block_learnable": Trainer(WeightlessBlock.from_params(params, candidates=args.candidates).train(), x, target),
    }
    times = {name: [] for name in trainers}
    from tqdm import tqdm

    for round_ in tqdm(range(args.repeats + 2), desc="train-step rounds", file=sys.stderr):
        names = list(trainers)
        names = names[round_ % len(names):] + names[: round_ % len(names)]  # rotate who goes first
        for name in names:
            elapsed = trainers[name].step()
            if round_ >= 2:
                times[name].append(elapsed)
    cpu = {name: [] for name in ("dense", "block")}
    torch.set_num_threads(1)
    for round_ in tqdm(range(args.cpu_repeats + 1), desc="1-thread CPU-time rounds", file=sys.stderr):
        for name in (("dense", "block") if round_ % 2 else ("block", "dense")):
            elapsed = trainers[name].step(clock=time.process_time)
            if round_ >= 1:
                cpu[name].append(elapsed)
    torch.set_num_threads(args.threads)
    os.environ.pop(fused_training.ENABLE_ENV, None)
    for name, t in cpu.items():
        results[f"{name}_cpu_ms_1t"] = 1e3 * statistics.median(t)
    results["train_step_cpu_ratio_1t"] = results["block_cpu_ms_1t"] / results["dense_cpu_ms_1t"]
    results["cpu_repeats"] = args.cpu_repeats
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        results[f"{name}_ms"] = ms[name]
        results[f"{name}_min_ms"] = 1e3 * min(t)
    results["train_step_ratio"] = ms["block"] / ms["dense"]
    results["train_step_ratio_of_min"] = min(times["block"]) / min(times["dense"])
    results["train_step_ratio_input_grad"] = ms["block_input_grad"] / ms["dense_input_grad"]
    results["staged_ratio"] = ms["block_staged"] / ms["dense"]
    results["learnable_mapping_ratio"] = ms["block_learnable"] / ms["dense"]
    results["learnable_mapping_candidates"] = args.candidates
    results["fused_speedup_over_staged"] = ms["block_staged"] / ms["block"]
    results["wall_seconds"] = time.perf_counter() - started

    print(f"tokens={args.tokens} threads={results['threads']} (medians of {args.repeats} interleaved rounds)")
    for name in trainers:
        print(f"{name:>18}: {ms[name]:8.1f} ms/step  (fastest {results[name + '_min_ms']:.1f})")
    print(f"train_step_ratio block/dense: {results['train_step_ratio']:.2f}x "
          f"(with input gradient {results['train_step_ratio_input_grad']:.2f}x; per-stage torch path "
          f"{results['staged_ratio']:.2f}x; learnable mapping, {args.candidates} candidates, "
          f"{results['learnable_mapping_ratio']:.2f}x)")
    print(f"1 thread, CPU time per step: dense {results['dense_cpu_ms_1t']:.1f} ms, block {results['block_cpu_ms_1t']:.1f} ms "
          f"({results['train_step_cpu_ratio_1t']:.2f}x)")
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    main()

"""Training step time of a WeightlessBlock against the dense MLP it replaces, measured in one run.

MiniLM size: dense 384 -> 1536 -> GELU -> 384 (torch Linear) against a block of the converter's default
structure for 384 -> 384 (`default_config`: LUT6, 8 thresholds per feature, 8 LUTs per output = 3,072
LUTs), both trained by Adam on MSE at 2048 tokens per step; a step is forward + backward + update
(+ table clamp for the block). Prints the median step times and their ratio.

    python bench/train_step.py [--tokens 2048] [--repeats 10] [--threads N] [--candidates 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from quweit.custom_ops import default_config, random_params
from quweit.custom_ops.torch_block import WeightlessBlock


def step_time(module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, repeats: int, after=None) -> float:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    times = []
    for _ in range(repeats + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = ((module(x) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after:
            after()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--candidates", type=int, default=1, help="learnable mapping candidates per slot")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, h = args.d_model, args.hidden
    x = torch.randn(args.tokens, d)
    target = torch.randn(args.tokens, d)
    dense = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, d))
    config = default_config(d, d)
    params = random_params(np.random.default_rng(0), in_features=d, out_features=d,
                           thresholds_per_feature=config.thresholds_per_feature, lut_inputs=config.lut_inputs,
                           layer_sizes=config.layer_sizes(d), input_bits=config.input_bits)
    block = WeightlessBlock.from_params(params, candidates=args.candidates).train()
    dense_s = step_time(dense, x, target, args.repeats)
    block_s = step_time(block, x, target, args.repeats, after=block.clamp_tables_)
    print(f"tokens={args.tokens} threads={torch.get_num_threads()} candidates={args.candidates}")
    print(f"dense MLP {d}->{h}->{d}: {1e3 * dense_s:.1f} ms/step")
    print(f"WeightlessBlock {d}->{d} ({sum(params.layer_sizes)} LUT{config.lut_inputs}, T={config.thresholds_per_feature}): "
          f"{1e3 * block_s:.1f} ms/step")
    print(f"ratio block/dense: {block_s / dense_s:.2f}x")


if __name__ == "__main__":
    main()

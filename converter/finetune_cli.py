"""`quweit-finetune`: train the WeightlessBlocks of a converted model end to end and write them back.

    quweit-finetune MODEL.quweit.onnx --teacher MODEL.onnx --data DATA.npz [-o OUT] [--steps N] [--resume CKPT]

`--data` is an npz with one array per graph input (the converter's `--calib` format), first axis =
samples; with `--teacher` the blocks are distilled from the original model's first output, without it
an array `labels` gives a task loss (cross-entropy on the first output). Multi-process:
`torchrun --nproc_per_node 2 -m quweit.converter.finetune_cli ...` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quweit.command import naming, run_command

from .errors import FinetuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quweit-finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="converted model (with quweit::WeightlessBlock nodes)")
    parser.add_argument("--data", type=Path, required=True, help="npz: one array per graph input [+ labels]")
    parser.add_argument("--teacher", type=Path, help="original model to distil from (else: task loss on labels)")
    parser.add_argument("-o", "--output", type=Path, help="output model (default: MODEL stem + .finetuned.onnx)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split across processes)")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate of tables and mapping")
    parser.add_argument("--value-lr", type=float, default=1e-3, help="learning rate of encoded values, biases")
    parser.add_argument("--candidates", type=int, default=1, help="learnable mapping candidates per LUT slot")
    parser.add_argument("--train-dense", action="store_true",
                        help="also train the model's other float weights (written back too)")
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="with --train-dense, keep the embedding tables (initializers only Gather reads) fixed: "
                             "a dense update of every row costs much and distillation does not need it")
    parser.add_argument("--dense-lr", type=float, default=1e-4, help="learning rate of the other weights")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up over these steps")
    parser.add_argument("--bypass-lr", type=float, default=1e-3,
                        help="learning rate of the low-rank linear bypasses beside blocks (trained when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-seconds", type=float,
                        help="stop after this much training time in all (a resumed run counts the time before)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="learning rates: constant, or cosine decay to 0 over --steps or the budget")
    parser.add_argument("--no-trim-padding", action="store_true",
                        help="keep sequence positions that are padding in every row of a batch")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUTPUT + .ckpt)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise FinetuneError(f"--{name} must be > 0, got {value}")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist
    from quweit.onnxio import load_arrays, load_model, save_model

    from .finetune import FinetuneOptions, Teacher, finetune

    for name in ("steps", "batch_size", "lr", "value_lr", "dense_lr", "candidates", "checkpoint_every", "budget_seconds"):
        _positive(name.replace("_", "-"), getattr(args, name))
    output = args.output or args.model.with_name(args.model.name.removesuffix(".onnx") + ".finetuned.onnx")
    if output.resolve() in {args.model.resolve(), args.data.resolve()} | (
            {args.teacher.resolve()} if args.teacher else set()):
        raise FinetuneError(f"output {output} would overwrite an input")
    if output.exists() and not args.force:
        raise FinetuneError(f"output {output} exists; pass --force to overwrite it")
    for path in (args.model, args.data, args.teacher, args.resume):
        if path is not None and not path.is_file():
            raise FinetuneError(f"{path}: no such file")
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if owns_group:  # a caller that set up its own process group (a training script under torchrun) keeps it
        dist.init_process_group("gloo")
    data = load_arrays(args.data, f"--data {args.data}")
    student = load_model(args.model)
    teacher = Teacher(args.teacher) if args.teacher else None
    options = FinetuneOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, value_lr=args.value_lr,
                              seed=args.seed, candidates=args.candidates, checkpoint_every=args.checkpoint_every,
                              budget_seconds=args.budget_seconds, train_dense=args.train_dense,
                              train_lookups=not args.freeze_embeddings,
                              dense_lr=args.dense_lr, bypass_lr=args.bypass_lr, schedule=args.schedule,
                              warmup_steps=args.warmup_steps,
                              trim_padding=not args.no_trim_padding)
    checkpoint = args.checkpoint or output.with_name(output.name + ".ckpt")
    with naming(args.model):
        trained, losses = finetune(student, data, teacher=teacher, options=options, checkpoint=checkpoint,
                                   resume=args.resume, progress=not args.no_progress)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        save_model(trained, output, force=args.force)
        first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
        print(f"trained {len(losses)} steps: loss {first:.4f} -> {last:.4f}; wrote {output} (checkpoint {checkpoint})")
    if owns_group:
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("quweit-finetune", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""What the two paper experiments (`vision_fashion_mnist.py`, `chargpt_fortunes.py`) share.

The QuWeiT paper's protocol, at CPU scale, through quweit's own stages:
- **dense**: the model trained normally (here, in torch) - the baseline;
- **converted**: the dense model exported to ONNX, every MLP replaced by `quweit-convert`, then fine-tuned
  end to end with the task loss by `quweit-finetune` (labels in the npz, no teacher, `--train-dense`);
- **from scratch**: the *untrained* model exported and converted, then trained with labels by
  `quweit-finetune` for the same steps, batch and learning-rate schedule as the dense model (the paper's way).
All three are evaluated in onnxruntime with quweit's kernel. The dense trainer draws its batches, and
decays its learning rate, exactly as `quweit-finetune` does, so the budgets are comparable step for step.

Under `torchrun --nproc_per_node N` every stage that trains runs DDP (gloo); export, conversion and
evaluation run on rank 0 while the others wait.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.distributed as dist
from quweit.converter.cli import main as convert_main
from quweit.converter.finetune import LABELS, schedule_factor, task_loss
from quweit.converter.finetune_cli import main as finetune_main
from quweit.custom_ops import read_blocks
from quweit.onnxio import write_json, write_npz
from quweit.runtime import make_session
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "examples" / "results"
OPSET = 18


# ----- the transformer parts both models use ---------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention written out (so the export is plain MatMul/Softmax, causal mask by Trilu+Where)."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        qkv = self.qkv(x).reshape(batch, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dim // self.heads))
        if self.causal:
            future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=x.device), diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(batch, seq, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; its MLP (Linear -> GELU -> Linear) is what quweit replaces."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(model: nn.Module) -> None:
    """GPT-2/ViT-style initialisation: normal(0, 0.02) linear and embedding weights, zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


# ----- processes -------------------------------------------------------------------------------------
def init_distributed(threads: int | None = None) -> tuple[int, int]:
    """(rank, world size); joins the gloo process group when started by torchrun, and sets torch's threads
    (default: the cores shared among the processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_rank0(fn: Callable, *args, **kwargs):
    """Run `fn` on rank 0 only, the others waiting; every rank gets rank 0's (JSON-able) result."""
    result = fn(*args, **kwargs) if not dist.is_initialized() or dist.get_rank() == 0 else None
    if dist.is_initialized():
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result


# ----- training the dense baseline -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """Steps of a global batch; the dense model and the from-scratch quweit model get the same one."""

    steps: int
    batch_size: int
    lr: float
    schedule: str = "cosine"


def train_dense(model: nn.Module, data: dict[str, np.ndarray], budget: Budget, *, seed: int,
                progress: bool = True) -> dict:
    """Train `model` on `data` (graph inputs + `labels`) with the task loss, drawing batches and decaying the
    learning rate as `quweit-finetune` does (Adam, same sampler, same schedule); DDP under torchrun."""
    from tqdm.auto import tqdm

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if budget.batch_size % world:
        raise ValueError(f"batch size {budget.batch_size} is not divisible by the {world} processes")
    local = budget.batch_size // world
    names = [n for n in data if n != LABELS]
    rows = len(data[LABELS])
    torch.manual_seed(seed)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    generator = np.random.default_rng(seed)
    losses, start = [], time.monotonic()
    model.train()
    for step in tqdm(range(budget.steps), desc="dense", unit="step", disable=not progress or rank > 0):
        for group in optimizer.param_groups:
            group["lr"] = budget.lr * schedule_factor(budget.schedule, step / budget.steps)
        batch = generator.choice(rows, size=budget.batch_size, replace=rows < budget.batch_size)
        mine = batch[rank * local:(rank + 1) * local]
        output = trained(*(torch.from_numpy(np.ascontiguousarray(data[n][mine])) for n in names))
        loss = task_loss(output, torch.from_numpy(np.asarray(data[LABELS][mine])))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": budget.steps, "batch_size": budget.batch_size, "lr": budget.lr, "schedule": budget.schedule,
            "seconds": round(time.monotonic() - start, 1), "loss_first": losses[0], "loss_last_100": _tail(losses)}


def _tail(losses: list[float], count: int = 100) -> float:
    return float(np.mean(losses[-count:])) if losses else float("nan")


# ----- the pipeline stages ---------------------------------------------------------------------------
def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path, *, dynamic: dict[str, dict[int, str]],
                output: str = "logits") -> Path:
    """The torch model as ONNX (TorchScript exporter, opset 18, the given dynamic axes).

    Exported in training mode (the models have no dropout or batch norm, so the graph computes the same):
    in eval mode the exporter merges parameters of equal value - every LayerNorm gain and zero bias of an
    untrained model - into one initializer, and training the exported model would tie them.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                          output_names=[output], dynamic_axes={**dynamic, output: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    model.eval()
    return path


def convert(dense: Path, calib: Path, output: Path, block: dict[str, object], report: Path) -> dict:
    """`quweit-convert DENSE --calib CALIB --layers all --lut-inputs ...` (every MLP replaced)."""
    args = [str(dense), "-o", str(output), "--calib", str(calib), "--layers", "all", "--report", str(report),
            "--force", "--no-sensitivity", "--quiet", *block_arguments(block)]
    print("quweit-convert " + shlex.join(args), flush=True)
    code = convert_main(args)
    if code:
        raise SystemExit(f"quweit-convert failed with exit code {code}")
    return json.loads(report.read_text())


def block_arguments(block: dict[str, object]) -> list[str]:
    args = ["--lut-inputs", str(block["lut_inputs"]), "--thresholds", str(block["thresholds"]),
            "--luts-per-output", str(block["luts_per_output"])]
    if block.get("hidden_layers"):
        args += ["--hidden-layers", ",".join(str(v) for v in block["hidden_layers"])]
    return args


def finetune(model: Path, data: Path, output: Path, budget: Budget, *, lr: float, value_lr: float, seed: int,
             progress: bool = True) -> dict:
    """`quweit-finetune MODEL --data DATA --train-dense ...` with the task loss (no teacher); every rank runs it."""
    args = [str(model), "--data", str(data), "-o", str(output), "--force", "--steps", str(budget.steps),
            "--batch-size", str(budget.batch_size), "--lr", str(lr), "--value-lr", str(value_lr), "--train-dense",
            "--dense-lr", str(budget.lr), "--schedule", budget.schedule, "--seed", str(seed),
            "--checkpoint-every", str(max(budget.steps, 1)), *([] if progress else ["--no-progress"])]
    if not dist.is_initialized() or dist.get_rank() == 0:
        print("quweit-finetune " + shlex.join(args), flush=True)
    start = time.monotonic()
    code = finetune_main(args)
    if code:
        raise SystemExit(f"quweit-finetune failed with exit code {code}")

    def summary() -> dict:  # rank 0 writes the checkpoint: the others read its summary from there
        state = torch.load(output.with_name(output.name + ".ckpt"), weights_only=True)
        return {"steps": int(state["step"]), "loss_first": float(state["losses"][0]),
                "loss_last_100": _tail(state["losses"])}

    return {**on_rank0(summary), "batch_size": budget.batch_size, "dense_lr": budget.lr, "lr": lr,
            "value_lr": value_lr, "schedule": budget.schedule, "seconds": round(time.monotonic() - start, 1),
            "command": "quweit-finetune " + shlex.join(args)}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    return write_npz(path, arrays, force=True)


def session(path: Path, threads: int | None = None):
    """onnxruntime with quweit's kernel (a dense model runs in the same runtime, for a like-for-like comparison)."""
    return make_session(path, threads=threads or max(1, torch.get_num_threads()))


def run_batched(sess, inputs: dict[str, np.ndarray], batch: int = 500) -> np.ndarray:
    """The model's first output over all rows of `inputs`, `batch` rows per run."""
    rows = len(next(iter(inputs.values())))
    first = sess.get_outputs()[0].name
    return np.concatenate([sess.run([first], {k: v[i:i + batch] for k, v in inputs.items()})[0]
                           for i in range(0, rows, batch)])


def block_summary(path: Path) -> dict:
    """LUT count and shape of the blocks in a converted model."""
    blocks = read_blocks(onnx.load(str(path)))
    return {"blocks": len(blocks), "luts_per_block": [int(sum(b.layer_sizes)) for b in blocks],
            "luts_total": int(sum(sum(b.layer_sizes) for b in blocks)),
            "table_bits_total": int(sum(sum(b.layer_sizes) * (1 << b.lut_inputs) for b in blocks))}


# ----- bookkeeping -----------------------------------------------------------------------------------
def machine() -> dict:
    """Where and under what load a run happened (noise is part of the result)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def command_line() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --standalone --nproc_per_node {world}" if world > 1 else "python"
    return f"{launcher} {shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}"


def write_results(path: Path, results: dict) -> Path:
    """Write the experiment's JSON atomically (the README's table and plots are rendered from it)."""
    return write_json(path, results, force=True)


# ----- the experiment driver -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Experiment:
    """What differs between the experiments; `run` does the rest."""

    name: str
    task: str
    metric_name: str  # as the README shows it
    metric_key: str  # field name of the metric in each model's entry: "test_<key>", "validation_<key>"
    higher_is_better: bool
    target: str
    sweep: tuple[dict, ...]


DEFAULT_BLOCK = {"lut_inputs": 6, "thresholds": 8, "luts_per_output": 8, "hidden_layers": []}


def sweep_blocks(hidden: int) -> tuple[dict, ...]:
    """The block structures of the sweep: the default, then one knob moved at a time (n, T, G, hidden layer)."""
    return (DEFAULT_BLOCK, *({**DEFAULT_BLOCK, **change} for change in (
        {"lut_inputs": 4}, {"thresholds": 4}, {"thresholds": 16}, {"luts_per_output": 2}, {"luts_per_output": 32},
        {"hidden_layers": [hidden]})))


def add_arguments(parser, *, steps: int, batch_size: int, lr: float, finetune_steps: int, finetune_dense_lr: float,
                  calib: int, sweep_steps: int, hidden_example: int) -> None:
    """The options every experiment shares (model options are the experiment's own)."""
    parser.add_argument("--quick", action="store_true", help="minutes: a smoke test of the pipeline (CI), not of "
                        "quality")
    parser.add_argument("--sweep", action="store_true", help="sweep block structures (converted path) instead")
    parser.add_argument("--out", type=Path, help="working folder for models and data (default: a temporary one)")
    parser.add_argument("--results", type=Path, help="result JSON (default examples/results/NAME[_sweep][_quick].json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads per process (default: the "
                        "cores, divided among torchrun processes)")
    g = parser.add_argument_group("training (dense and from scratch share it)")
    g.add_argument("--steps", type=int, default=steps)
    g.add_argument("--batch-size", type=int, default=batch_size, help="global batch (split across processes)")
    g.add_argument("--lr", type=float, default=lr, help="Adam learning rate of the float weights")
    g = parser.add_argument_group("quweit")
    g.add_argument("--finetune-steps", type=int, default=finetune_steps, help="fine-tuning steps, converted model")
    g.add_argument("--finetune-dense-lr", type=float, default=finetune_dense_lr,
                   help="learning rate of the float weights when fine-tuning the converted model")
    g.add_argument("--table-lr", type=float, default=1e-2, help="learning rate of LUT tables")
    g.add_argument("--value-lr", type=float, default=1e-3, help="learning rate of encoded values and biases")
    g.add_argument("--calib", type=int, default=calib, help="training samples for calibration")
    g.add_argument("--lut-inputs", type=int, default=DEFAULT_BLOCK["lut_inputs"])
    g.add_argument("--thresholds", type=int, default=DEFAULT_BLOCK["thresholds"])
    g.add_argument("--luts-per-output", type=int, default=DEFAULT_BLOCK["luts_per_output"])
    g.add_argument("--hidden-layers", default="", help=f"sizes of hidden LUT layers, e.g. {hidden_example}")
    g.add_argument("--sweep-steps", type=int, default=sweep_steps, help="fine-tuning steps per sweep point")


def quick(args) -> None:
    """`--quick`: a few steps of everything (the pipeline runs end to end; the numbers mean nothing)."""
    if args.quick:
        args.steps, args.finetune_steps, args.sweep_steps, args.calib = 12, 6, 4, min(args.calib, 64)


def run(exp: Experiment, args, *, splits: dict[str, dict[str, np.ndarray]], build: Callable[[], nn.Module],
        input_name: str, dynamic: dict[int, str], evaluate: Callable[[Path], dict], describe: dict,
        attention_macs: int) -> dict:
    """Train, convert, fine-tune and evaluate as the module docstring says; returns (and on rank 0 writes) the
    results. `evaluate(path)` returns `{"test": metric, "validation": metric, ...}` (extra keys are kept).
    `attention_macs`: activation x activation multiplications per token (scores and weighted sums), which
    quweit-convert's count of weight products leaves out; the results give the share removed with them too."""
    rank, _ = init_distributed(args.threads)
    started, load_start, commit = time.monotonic(), [round(v, 2) for v in os.getloadavg()], git_commit()
    out = Path(args.out or on_rank0(lambda: tempfile.mkdtemp(prefix=f"quweit-{exp.name}-")))
    out.mkdir(parents=True, exist_ok=True)
    train = splits["train"]
    rows = len(train[LABELS])
    calib = np.sort(np.random.default_rng(args.seed).permutation(rows)[:args.calib])
    on_rank0(lambda: (save_npz(out / "train.npz", train), save_npz(out / "calib.npz", {input_name: train[input_name][calib]})))
    example = {input_name: torch.from_numpy(train[input_name][:2])}
    torch.manual_seed(args.seed)
    model = build()
    on_rank0(export_onnx, model, example, out / "untrained.onnx", dynamic={input_name: dynamic})
    budget = Budget(args.steps, args.batch_size, args.lr)
    dense_training = train_dense(model, train, budget, seed=args.seed)
    on_rank0(export_onnx, model, example, out / "dense.onnx", dynamic={input_name: dynamic})
    results = {
        "experiment": exp.name, "task": exp.task, **describe,
        "model": {**describe.get("model", {}), "parameters": sum(p.numel() for p in model.parameters())},
        "metric_name": exp.metric_name, "higher_is_better": exp.higher_is_better, "quick": args.quick,
        "seeds": {"data": args.seed, "init": args.seed, "training": args.seed, "calibration_rows": args.seed},
        "dense": {"training": dense_training, **_entry(exp, on_rank0(evaluate, out / "dense.onnx"))},
    }
    results["dense_metric"] = results["dense"][f"test_{exp.metric_key}"]
    block = {"lut_inputs": args.lut_inputs, "thresholds": args.thresholds, "luts_per_output": args.luts_per_output,
             "hidden_layers": [int(v) for v in args.hidden_layers.split(",") if v]}
    stages = (_sweep(exp, args, out, exp.sweep[:2] if args.quick else exp.sweep, evaluate) if args.sweep
              else _three_models(exp, args, out, block, budget, evaluate))
    results.update(stages)
    if "macs_per_token_before" in results:
        before, after = (results[f"macs_per_token_{k}"] + attention_macs for k in ("before", "after"))
        results.update({"attention_macs_per_token": attention_macs,
                        "mult_share_removed_with_attention": 1.0 - after / before})
    results.update({"command": command_line(), "git_commit": commit, "machine": machine(),
                    "load_average_start": load_start, "wall_seconds": round(time.monotonic() - started, 1)})
    if rank == 0:
        name = f"{exp.name}{'_sweep' if args.sweep else ''}{'_quick' if args.quick else ''}.json"
        print(f"wrote {write_results(args.results or RESULTS / name, results)}")
    barrier()
    return results


def _entry(exp: Experiment, metrics: dict) -> dict:
    return {f"{split}_{exp.metric_key}" if split in ("test", "validation") else split: value
            for split, value in metrics.items()}


def _better(exp: Experiment, a: float, b: float) -> bool:
    return a >= b if exp.higher_is_better else a <= b


def _three_models(exp: Experiment, args, out: Path, block: dict, budget: Budget, evaluate) -> dict:
    """The converted and from-scratch quweit models (the dense one is trained by then)."""
    report = on_rank0(convert, out / "dense.onnx", out / "calib.npz", out / "dense.quweit.onnx", block,
                      out / "dense.report.json")
    before = on_rank0(evaluate, out / "dense.quweit.onnx")
    tune = Budget(args.finetune_steps, args.batch_size, args.finetune_dense_lr)
    converted = {"before_finetuning": _entry(exp, before),
                 "finetuning": finetune(out / "dense.quweit.onnx", out / "train.npz", out / "converted.onnx", tune,
                                        lr=args.table_lr, value_lr=args.value_lr, seed=args.seed)}
    converted.update(_entry(exp, on_rank0(evaluate, out / "converted.onnx")))
    on_rank0(convert, out / "untrained.onnx", out / "calib.npz", out / "untrained.quweit.onnx", block,
             out / "untrained.report.json")
    scratch = {"training": finetune(out / "untrained.quweit.onnx", out / "train.npz", out / "from_scratch.onnx",
                                    budget, lr=args.table_lr, value_lr=args.value_lr, seed=args.seed)}
    scratch.update(_entry(exp, on_rank0(evaluate, out / "from_scratch.onnx")))
    key = f"test_{exp.metric_key}"
    chosen_by = f"validation_{exp.metric_key}"  # the reported quweit model is chosen on validation, not test
    best = "converted" if _better(exp, converted[chosen_by], scratch[chosen_by]) else "from_scratch"
    return {
        "block": block, "blocks": on_rank0(block_summary, out / "converted.onnx"),
        **{k: report[k] for k in ("mlps_found", "mlps_replaced", "mult_share_removed", "params_before",
                                  "params_after")},
        "macs_per_token_before": report["macs_before"], "macs_per_token_after": report["macs_after"],
        "converted": converted, "from_scratch": scratch,
        "quweit_metric": converted[key] if best == "converted" else scratch[key], "quweit_model": best,
        "quweit_model_chosen_by": chosen_by,
        "target": exp.target,
    }


def _sweep(exp: Experiment, args, out: Path, blocks: tuple[dict, ...], evaluate) -> dict:
    """Each block structure: convert the dense model, fine-tune it `--sweep-steps`, then its metric and costs."""
    points = []
    tune = Budget(args.sweep_steps, args.batch_size, args.finetune_dense_lr)
    for index, block in enumerate(blocks):
        tag, start = f"sweep{index}", time.monotonic()
        report = on_rank0(convert, out / "dense.onnx", out / "calib.npz", out / f"{tag}.quweit.onnx", block,
                          out / f"{tag}.report.json")
        tuned = finetune(out / f"{tag}.quweit.onnx", out / "train.npz", out / f"{tag}.onnx", tune,
                         lr=args.table_lr, value_lr=args.value_lr, seed=args.seed, progress=False)
        metrics = _entry(exp, on_rank0(evaluate, out / f"{tag}.onnx"))
        points.append({"block": block, **on_rank0(block_summary, out / f"{tag}.onnx"),
                       "mult_share_removed": report["mult_share_removed"], "params_after": report["params_after"],
                       "finetune_steps": tuned["steps"], **metrics, "seconds": round(time.monotonic() - start, 1)})
        print(f"sweep point {index} {block}: {exp.metric_name} {metrics[f'test_{exp.metric_key}']:.4f}, "
              f"{points[-1]['luts_total']} LUTs", flush=True)
    return {"sweep": points, "sweep_finetune_steps": args.sweep_steps}

"""End-to-end fine-tuning of a converted model: distillation from the original, or a task loss on labels.

The converted ONNX graph becomes a torch module (`onnx_torch.OnnxGraphModule`); the `WeightlessBlock`s
train (tables by EFD, mapping, encoded values with quantization-aware rounding) and, only when asked
(`train_dense`), the other float weights too; the trained values are written back into the ONNX model.
The teacher (the original model) runs in onnxruntime. Under `torchrun` the same code trains with
DistributedDataParallel (gloo): every rank draws the same global batch and takes its own equal share,
so the averaged gradient is the global batch's gradient (up to float summation order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.distributed as dist
from quweit.onnxio import (
    ONNXRUNTIME_ERRORS,
    BadInputError,
    atomic_output,
    check_inputs,
    input_specs,
    load_ir,
    probe_session,
    run_size,
    runs,
)

from .errors import FinetuneError
from .onnx_torch import OnnxGraphModule, write_back

LABELS = "labels"


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-2  # tables and mapping weights (entries live in [-1, 1])
    value_lr: float = 1e-3  # encoded values and biases, in output units
    seed: int = 0
    candidates: int = 1  # mapping candidates per LUT slot (1: the fitted mapping stays fixed)
    checkpoint_every: int = 50
    mask_input: str | None = "attention_mask"  # distil only real tokens when this input is present
    train_dense: bool = False  # also train the float initializers around the blocks (attention, norms, ...)
    train_lookups: bool = True  # with train_dense, the embedding tables too (onnx_torch.lookup_tables)
    dense_lr: float = 1e-4
    bypass_lr: float = 1e-3  # low-rank linear bypasses beside the blocks (converter.bypass), always trained
    table_magnitude: float = 0.25  # |entry| of fitted tables: small enough that EFD can flip them
    budget_seconds: float | None = None
    trim_padding: bool = True  # drop sequence positions that are padding in every row of the batch
    schedule: str = "constant"  # or "cosine": every learning rate decays to 0 over the steps or the budget
    warmup_steps: int = 0  # every learning rate rises linearly from 0 over the first steps (Adam's first
    # updates are about lr in size whatever the gradient: without warm-up they jolt all pretrained weights)
    hidden: tuple[str, ...] = ()  # distillation: inner values of both models (hidden states) also matched
    hidden_weight: float = 0.0  # their loss's share: output loss + hidden_weight * mean hidden-state loss


def check_data(data: Mapping[str, np.ndarray], model, *, source: str = "data") -> int:
    """The data's row count: the I/O layer's input checks (names, ranks, dtypes, the model's fixed axes),
    plus `labels` with one row per sample when present."""
    rows = check_inputs(model, data, source, extra={LABELS})
    if LABELS in data and (np.ndim(data[LABELS]) == 0 or len(data[LABELS]) != rows):
        raise BadInputError(f"{source}: '{LABELS}' must have one row per sample ({rows}), got shape "
                            f"{list(np.shape(data[LABELS]))}")
    return rows


def trim_padding(feeds: dict[str, np.ndarray], mask_name: str) -> dict[str, np.ndarray]:
    """The batch without its trailing sequence positions that are padding in every row.

    A right-padded batch of short sentences is mostly padding (WordNet glosses: about 10 real tokens in
    rows padded to 43 or more). Positions masked out in every row influence no real token, so dropping
    them changes no real output, and the masked loss only by float summation order. Arrays whose first
    two axes are not the mask's `[batch, sequence]` are left as they are.
    """
    mask = feeds[mask_name]
    if mask.ndim != 2:
        return feeds
    used = np.flatnonzero(mask.any(0))
    length = int(used[-1]) + 1 if used.size else 1
    if length == mask.shape[1]:
        return feeds
    return {name: np.ascontiguousarray(value[:, :length]) if value.ndim >= 2 and value.shape[:2] == mask.shape
            else value for name, value in feeds.items()}


def schedule_factor(schedule: str, progress: float) -> float:
    """The learning-rate multiplier at `progress` in [0, 1] of the run (steps or budget, whichever is further)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    raise FinetuneError(f"unknown learning-rate schedule '{schedule}' (constant, cosine)")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path, force=True) as tmp, open(tmp, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # a full disk: torch reports it as its own RuntimeError
                raise writer.error from None
            raise


class _RecordingWriter:
    """A file for torch.save that keeps the OSError of a failed write (torch turns it into a RuntimeError
    about stream positions, which would hide a full disk behind an internal error)."""

    def __init__(self, handle) -> None:
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


#: What `_save_checkpoint` writes; `load_checkpoint` requires every key.
CHECKPOINT_KEYS = ("step", "losses", "seconds", "model", "optimizer", "generator")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `_save_checkpoint`, read with `weights_only=True`: tensors, dicts, lists,
    numbers and strings only, so a crafted file cannot run code (it is a user's file)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # torch's messages carry terminal colour codes
        raise FinetuneError(f"--resume {path}: not a readable quweit-finetune checkpoint ({first})") from err
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise FinetuneError(f"--resume {path}: not a quweit-finetune checkpoint (missing {missing})")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise FinetuneError(f"--resume {path}: step {state['step']!r} is not a count of steps")
    return state


def _resume(path: Path, graph: torch.nn.Module, optimizer, generator: np.random.Generator) -> tuple[int, list, float]:
    """Restore model, optimizer and sampler from a checkpoint; (step, losses, seconds) to continue from."""
    state = load_checkpoint(path)
    try:
        graph.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.bit_generator.state = state["generator"]
        return state["step"], [float(v) for v in state["losses"]], float(state["seconds"])
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FinetuneError(f"--resume {path}: the checkpoint does not belong to this model and these options "
                            f"({first})") from err


class Teacher:
    """The original model in onnxruntime (one thread per process: ranks share the cores), run in as many
    runs as its declared input shapes need (a static batch of 1: one row at a time)."""

    def __init__(self, model: str | Path | onnx.ModelProto | ir.Model, threads: int = 1,
                 inner: Sequence[str] = (), *, path: str | Path | None = None) -> None:
        loaded = isinstance(model, (onnx.ModelProto, ir.Model))
        self.path = path or ("the teacher model" if loaded else model)
        self.model = model if loaded else load_ir(model)
        self.threads = threads
        try:
            self.session = probe_session(self.model, inner, kernel=None, threads=threads)
        except KeyError as err:
            raise FinetuneError(f"--teacher {self.path}: {err.args[0]}") from err
        except ONNXRUNTIME_ERRORS as err:
            raise FinetuneError(f"--teacher {self.path}: onnxruntime cannot load it: {_first_line(err)}") from err
        self.output_names = [o.name for o in self.session.get_outputs()]

    def with_inner(self, names: Sequence[str]) -> Teacher:
        """The same teacher that also outputs its inner values `names` (after its own outputs)."""
        return Teacher(self.model, self.threads, names, path=self.path) if names else self

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:  # the user's model on the user's data: a refusal is bad input
            rows = len(next(iter(feeds.values())))
            parts = runs(self.model, feeds, rows)
            if len(parts) == 1 and parts[0].rows == rows:
                return self.session.run(None, parts[0].feeds)
            outputs = [self.session.run(None, part.feeds) for part in parts]
        except ONNXRUNTIME_ERRORS as err:
            raise FinetuneError(f"--teacher {self.path}: onnxruntime cannot run it on the data: "
                                f"{_first_line(err)}") from err
        return [np.concatenate([out[k][: part.rows] for out, part in zip(outputs, parts)])
                for k in range(len(self.output_names))]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, variance: float,
                      mask: torch.Tensor | None = None, tokens_per_sample: float = 1.0) -> torch.Tensor:
    """Mean squared error over the teacher's output variance (1.0 = predicting the mean).

    With a token `mask [B, S]` only real tokens count, divided by a fixed mean token count. The
    normalisers are measured once on the data, not per batch, so every process of a distributed run
    optimises the same objective and the averaged gradients equal the global batch's.
    """
    squared = (student - teacher) ** 2
    if mask is None:
        return squared.mean() / variance
    per_token = squared.mean(-1) * mask
    return per_token.sum() / (mask.shape[0] * tokens_per_sample) / variance


def task_loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits `[..., C]` against integer labels `[...]` (-100 is ignored)."""
    return torch.nn.functional.cross_entropy(student.reshape(-1, student.shape[-1]), labels.reshape(-1).long(),
                                             ignore_index=-100)


def finetune(
    student: onnx.ModelProto,
    data: Mapping[str, np.ndarray],
    *,
    teacher: Teacher | None = None,
    options: FinetuneOptions = FinetuneOptions(),
    checkpoint: Path | None = None,
    resume: Path | None = None,
    progress: bool = True,
) -> tuple[onnx.ModelProto, list[float]]:
    """Train the blocks of `student` (and its other weights with `train_dense`); returns the model with
    the trained values and the per-step losses.

    Distillation when `teacher` is given (its first output against the student's first output),
    otherwise a task loss on `data['labels']`.
    """
    from tqdm.auto import tqdm

    rows = check_data(data, student)
    if teacher is None and LABELS not in data:
        raise FinetuneError(f"no teacher and no '{LABELS}' array: nothing to train against")
    rank, world = _rank_world()
    if options.batch_size % world:
        raise FinetuneError(f"batch size {options.batch_size} is not divisible by the {world} processes")
    local = options.batch_size // world
    torch.manual_seed(options.seed)
    hidden = list(options.hidden) if teacher is not None and options.hidden_weight > 0 else []
    produced = {name for node in student.graph.node for name in node.output}
    missing = [n for n in hidden if n not in produced]
    if missing:
        raise FinetuneError(f"hidden-state distillation: the student has no values named {missing}")
    if hidden:
        teacher = teacher.with_inner(hidden)
    graph = OnnxGraphModule(student, train_dense=options.train_dense, train_lookups=options.train_lookups,
                            candidates=options.candidates, taps=hidden,
                            table_magnitude=options.table_magnitude, seed=options.seed).train()
    if not len(graph.blocks):
        raise FinetuneError("the student model holds no WeightlessBlock nodes to train")
    blocks = graph.blocks
    tables = [p for b in blocks.values() for p in (*b.tables, *b.mapping_weights)]
    values = [p for b in blocks.values() for p in (b.encoded_values, b.bias)]
    model = torch.nn.parallel.DistributedDataParallel(graph, forward_sync_buffers=False) if world > 1 else graph
    groups = [{"params": tables, "lr": options.lr}, {"params": values, "lr": options.value_lr}]
    bypass = [graph.dense[k] for k in graph.bypass_keys]
    dense = [p for k, p in graph.dense.items() if k not in graph.bypass_keys]
    for params, lr in ((bypass, options.bypass_lr), (dense, options.dense_lr)):
        if params:
            groups.append({"params": params, "lr": lr})
    optimizer = torch.optim.Adam(groups)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's (scheduled) ones
    generator = np.random.default_rng(options.seed)
    step, losses, elapsed = 0, [], 0.0
    if resume is not None:
        step, losses, elapsed = _resume(resume, graph, optimizer, generator)
    names = [n for n in data if n != LABELS]
    target = Target(teacher, hidden, options.hidden_weight)
    if teacher is not None:
        target.measure({n: np.ascontiguousarray(data[n][: min(rows, 64)]) for n in names})
    mask_name = options.mask_input if options.mask_input in names else None
    per_run = run_size(student, local)  # a static batch: each step accumulates gradients over runs
    if local % per_run:
        raise BadInputError(f"batch size {local} per process is not a multiple of the batch of {per_run} rows "
                            "that the model's inputs declare")
    trim = bool(mask_name and options.trim_padding and _free_sequence(student, mask_name))
    tokens_per_sample = float(np.asarray(data[mask_name]).sum(-1).mean()) if mask_name else 1.0
    schedule_factor(options.schedule, 0.0)  # an unknown schedule fails before any training
    start = time.monotonic() - elapsed
    bar = tqdm(total=options.steps, initial=step, desc="finetune", unit="step", disable=not progress or rank)
    while step < options.steps:
        progress_made = step / options.steps
        if options.budget_seconds is not None:
            elapsed = _shared_elapsed(time.monotonic() - start, world)
            if elapsed >= options.budget_seconds:
                break
            progress_made = max(progress_made, elapsed / options.budget_seconds)
        for group, base in zip(optimizer.param_groups, base_lrs):
            warm = min(1.0, (step + 1) / options.warmup_steps) if options.warmup_steps else 1.0
            group["lr"] = base * warm * schedule_factor(options.schedule, progress_made)
        batch = generator.choice(rows, size=options.batch_size, replace=rows < options.batch_size)
        mine = batch[rank * local:(rank + 1) * local]
        feeds = {n: np.ascontiguousarray(data[n][mine]) for n in names}
        labels = np.asarray(data[LABELS])[mine] if teacher is None else None
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        parts = range(0, local, per_run)
        for index, first in enumerate(parts):
            part = slice(first, first + per_run)
            sub = {n: v[part] for n, v in feeds.items()} if per_run < local else feeds
            if trim:
                sub = trim_padding(sub, mask_name)
            last = index == len(parts) - 1
            with model.no_sync() if world > 1 and not last else contextlib.nullcontext():
                loss = _loss(model, graph, sub, target, mask_name, tokens_per_sample,
                             None if labels is None else labels[part]) * (len(sub[names[0]]) / local)
                loss.backward()
            loss_value += float(loss.detach())
        optimizer.step()
        for block in blocks.values():
            block.clamp_tables_()
        step += 1
        losses.append(loss_value)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if checkpoint is not None and rank == 0 and step % options.checkpoint_every == 0:
            _save_checkpoint(checkpoint, step, losses, time.monotonic() - start, graph, optimizer, generator)
    bar.close()
    if checkpoint is not None and rank == 0:
        _save_checkpoint(checkpoint, step, losses, time.monotonic() - start, graph, optimizer, generator)
    return write_back(student, graph.block_params(), graph.dense_arrays()), losses


class Target:
    """What distillation matches: the teacher's first output and, with `hidden`, its inner values of the
    same names in the student (each loss over its own variance, so each term starts near 1)."""

    def __init__(self, teacher: Teacher | None, hidden: Sequence[str] = (), hidden_weight: float = 0.0) -> None:
        self.teacher, self.hidden, self.hidden_weight = teacher, list(hidden), hidden_weight
        self.variances: list[float] = []

    def measure(self, probe: dict[str, np.ndarray]) -> None:
        outputs = self.teacher(probe)
        self.variances = [max(float(np.var(outputs[k], dtype=np.float64)), 1e-12) for k in self._indices()]

    def _indices(self) -> list[int]:
        names = self.teacher.output_names
        return [0, *(names.index(n) for n in self.hidden)]

    def loss(self, output: torch.Tensor, tapped: dict[str, torch.Tensor], feeds: dict[str, np.ndarray],
             mask: torch.Tensor | None, tokens_per_sample: float) -> torch.Tensor:
        outputs = self.teacher(feeds)
        targets = [torch.from_numpy(outputs[k]) for k in self._indices()]
        if mask is not None and tuple(mask.shape) != tuple(output.shape[:-1]):
            mask = None
        loss = distillation_loss(output, targets[0], self.variances[0], mask, tokens_per_sample)
        if self.hidden:
            inner = sum(distillation_loss(tapped[n], t, v, mask, tokens_per_sample)
                        for n, t, v in zip(self.hidden, targets[1:], self.variances[1:]))
            loss = loss + self.hidden_weight * inner / len(self.hidden)
        return loss


def _loss(model, graph, feeds, target: Target, mask_name, tokens_per_sample, labels) -> torch.Tensor:
    """The training loss of one run: distillation from the teacher, or the task loss on `labels`."""
    output = model(**{n: torch.from_numpy(v) for n, v in feeds.items()})
    output = output[0] if isinstance(output, tuple) else output
    if target.teacher is None:
        return task_loss(output, torch.from_numpy(labels))
    mask = torch.from_numpy(feeds[mask_name]).to(output.dtype) if mask_name else None
    return target.loss(output, graph.tapped, feeds, mask, tokens_per_sample)


def _free_sequence(model, mask_name: str) -> bool:
    """Whether the mask's sequence axis is free (trimming padding must keep a fixed one)."""
    specs = {s.name: s for s in input_specs(model)}
    dims = specs[mask_name].dims if mask_name in specs else None
    return dims is None or len(dims) < 2 or not isinstance(dims[1], int)


def _shared_elapsed(seconds: float, world: int) -> float:
    """Training seconds as every process sees them: the largest, so all stop and decay together."""
    if world == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def _save_checkpoint(path: Path, step, losses, seconds, graph, optimizer, generator) -> None:
    _atomic_torch_save({"step": step, "losses": losses, "seconds": seconds, "model": graph.state_dict(),
                        "optimizer": optimizer.state_dict(), "generator": generator.bit_generator.state}, path)


"""The one activation capture: values inside a model, over runs of inputs, as float32 rows `[tokens, D]`.

Padded tokens are dropped when the run has an `attention_mask` of the value's leading shape, and rows
that only fill a fixed batch (`Run.rows`) are dropped, so every captured row is a real token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from .inputs import Run, as_run
from .session import make_session

MASK_INPUT = "attention_mask"


def token_rows(value: np.ndarray, run: Run | Mapping[str, np.ndarray]) -> np.ndarray:
    """`value` (one run's output) as float32 `[rows, D]` over real samples and real tokens."""
    run = as_run(run)
    value = np.asarray(value, np.float32)
    if value.ndim and value.shape[0] != run.rows and value.shape[0] == len(next(iter(run.feeds.values()))):
        value = value[: run.rows]
    mask = run.feeds.get(MASK_INPUT)
    if mask is not None:
        mask = mask[: run.rows]
        if value.shape[:-1] == mask.shape:
            return value[mask.astype(bool)]
    return value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)


def probe_session(model: onnx.ModelProto | ir.Model, names: Sequence[str], *, kernel: bool | None = None,
                  threads: int | None = None) -> ort.InferenceSession:
    """A session of `model` that also outputs the inner values `names` (the model is left as it was)."""
    if isinstance(model, ir.Model):
        values = {v.name: v for v in model.graph.outputs}
        inner = {}
        for node in model.graph:
            for out in node.outputs:
                if out.name in names:
                    inner[out.name] = out
        for value in model.graph.inputs:
            if value.name in names:
                inner[value.name] = value
        missing = [n for n in names if n not in values and n not in inner]
        if missing:
            raise KeyError(f"capture: no values named {missing} in the model")
        added = [inner[n] for n in dict.fromkeys(names) if n not in values]
        model.graph.outputs.extend(added)
        try:
            return make_session(model, kernel=kernel, threads=threads)
        finally:
            for _ in added:
                model.graph.outputs.pop()
    present = {o.name for o in model.graph.output}
    added = [n for n in dict.fromkeys(names) if n not in present]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in added)
    try:
        return make_session(model, kernel=kernel, threads=threads)
    finally:
        del model.graph.output[len(model.graph.output) - len(added):]


def collect(session: ort.InferenceSession, runs: Iterable[Run | Mapping[str, np.ndarray]],
            names: Sequence[str]) -> dict[str, np.ndarray]:
    """`names` of every run of `session`, each concatenated as float32 rows."""
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for run in map(as_run, runs):
        for name, value in zip(names, session.run(list(names), run.feeds)):
            collected[name].append(token_rows(value, run))
    return {n: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for n, v in collected.items()}


def capture(model: onnx.ModelProto | ir.Model, runs: Iterable[Run | Mapping[str, np.ndarray]],
            names: Sequence[str], *, kernel: bool | None = None) -> dict[str, np.ndarray]:
    """The values `names` of `model` over all runs, each as float32 `[tokens, D]`."""
    return collect(probe_session(model, names, kernel=kernel), runs, names)


def first_output(session: ort.InferenceSession, runs: Iterable[Run | Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """The session's first output of each run, as float32 rows over real tokens."""
    name = session.get_outputs()[0].name
    return [token_rows(session.run([name], r.feeds)[0], r) for r in map(as_run, runs)]

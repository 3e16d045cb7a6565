"""Calibration: run the model in onnxruntime on calibration inputs and capture values inside it.

Also the model-level fidelity measure used by the sensitivity table and `--layers auto`: the mean cosine
between the original and the converted model's first output, row by row along its last axis (per token
for a transformer), over the held-out calibration batches, ignoring padded tokens.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import BadInputError

Batch = dict[str, np.ndarray]
_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
             onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}
MASK_INPUT = "attention_mask"
PROTOBUF_LIMIT = (1 << 31) - (1 << 24)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def session(model: onnx.ModelProto, *, kernel: bool = True) -> ort.InferenceSession:
    """A CPU session; the quweit kernel is used when built and `kernel` (faster), else the op's decomposition."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if kernel and any(n.domain == "quweit" for n in model.graph.node):
        try:
            from quweit.runtime.session import session_options

            options = session_options(options=options)
        except (ImportError, OSError):
            pass
    if model.ByteSize() < PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="quweit-calib-") as folder:  # protobuf cannot serialize >= 2 GiB
        path = os.path.join(folder, "model.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data moves the tensors out of the proto it is given
        onnx.save_model(copy, path, save_as_external_data=True, location="model.onnx.data")
        del copy
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def check_calibration(model: onnx.ModelProto, calib: dict[str, np.ndarray], where: str = "--calib") -> None:
    """Every graph input present with the right rank and dtype kind, same number of samples."""
    expected = {i.name: i for i in graph_inputs(model)}
    missing = sorted(set(expected) - set(calib))
    extra = sorted(set(calib) - set(expected))
    if missing or extra:
        raise BadInputError(f"{where}: arrays {sorted(calib)} do not match the graph inputs {sorted(expected)}"
                            f" (missing {missing}, unexpected {extra})")
    counts = set()
    for name, info in expected.items():
        array = np.asarray(calib[name])
        rank = len(info.type.tensor_type.shape.dim)
        if array.ndim != rank:
            raise BadInputError(f"{where}: array '{name}' has shape {list(array.shape)}, the input has rank {rank}")
        want = _NP_TYPES.get(info.type.tensor_type.elem_type)
        if want is not None and np.dtype(want).kind != array.dtype.kind:
            raise BadInputError(f"{where}: array '{name}' has dtype {array.dtype}, the input wants {np.dtype(want)}")
        counts.add(array.shape[0] if array.ndim else 1)
    if len(counts) > 1:
        raise BadInputError(f"{where}: arrays have different numbers of samples {sorted(counts)}")
    if counts == {0}:
        raise BadInputError(f"{where}: no samples")


def load_calibration(path: str, model: onnx.ModelProto, flag: str = "--calib") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            calib = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise BadInputError(f"{flag} {path}: not a readable .npz file: {err}") from err
    check_calibration(model, calib, f"{flag} {path}")
    return calib


def synthetic_calibration(model: onnx.ModelProto, samples: int = 32, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs made from the graph's input types (token ids below the embedding size, masks of ones)."""
    warnings.warn(
        "no --calib data: calibrating on RANDOM inputs made from the graph's input types. Fitted blocks will "
        "only be as good as that data; pass real model inputs with --calib (npz, one array per input).",
        stacklevel=2,
    )
    rng = np.random.default_rng(seed)
    vocab = _embedding_rows(model)
    calib = {}
    for info in graph_inputs(model):
        dims = info.type.tensor_type.shape.dim
        shape = [samples if k == 0 and not d.dim_value else (d.dim_value or length) for k, d in enumerate(dims)]
        dtype = _NP_TYPES.get(info.type.tensor_type.elem_type, np.float32)
        if np.dtype(dtype).kind in "iu":
            calib[info.name] = (np.ones(shape, dtype) if "mask" in info.name else
                                rng.integers(0, vocab.get(info.name, 2), size=shape).astype(dtype))
        elif np.dtype(dtype).kind == "b":
            calib[info.name] = np.ones(shape, dtype)
        else:
            calib[info.name] = rng.standard_normal(shape).astype(dtype)
    return calib


def _embedding_rows(model: onnx.ModelProto) -> dict[str, int]:
    """Input name -> rows of the constant table it gathers from (the vocabulary size)."""
    inits = {t.name: t for t in model.graph.initializer}
    rows = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits:
            rows[node.input[1]] = min(rows.get(node.input[1], 1 << 30), int(inits[node.input[0]].dims[0]))
    return rows


def batches(calib: dict[str, np.ndarray], size: int, start: int = 0, stop: int | None = None) -> list[Batch]:
    n = next(iter(calib.values())).shape[0]
    stop = n if stop is None else stop
    return [{k: v[i:min(i + size, stop)] for k, v in calib.items()} for i in range(start, stop, size)]


def split(calib: dict[str, np.ndarray], batch: int, holdout: float = 0.25) -> tuple[list[Batch], list[Batch]]:
    """(fit batches, held-out batches): the last `holdout` share of samples is kept for measuring fidelity."""
    n = next(iter(calib.values())).shape[0]
    cut = n - max(1, round(n * holdout)) if n > 1 else n
    return batches(calib, batch, 0, cut), (batches(calib, batch, cut) if cut < n else batches(calib, batch))


def _token_rows(value: np.ndarray, feeds: Batch) -> np.ndarray:
    """`value` as `[rows, D]`, dropping padded tokens when the batch has an attention mask of matching shape."""
    mask = feeds.get(MASK_INPUT)
    if mask is not None and value.shape[:-1] == mask.shape:
        return value[mask.astype(bool)]
    return value.reshape(-1, value.shape[-1])


def capture(model: onnx.ModelProto, feeds: Iterable[Batch], names: Sequence[str], *, kernel: bool = True
            ) -> dict[str, np.ndarray]:
    """The values `names` of `model` over all batches, each as float32 `[tokens, D]`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = session(probe, kernel=kernel)
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in feeds:
        values = sess.run(list(names), batch)
        for name, value in zip(names, values):
            collected[name].append(_token_rows(np.asarray(value, np.float32), batch))
    return {n: np.concatenate(v) for n, v in collected.items()}


def outputs(model: onnx.ModelProto, feeds: Iterable[Batch]) -> list[np.ndarray]:
    """The first graph output of each batch, as `[rows, D]` over real tokens."""
    sess = session(model)
    first = sess.get_outputs()[0].name
    return [_token_rows(np.asarray(sess.run([first], b)[0], np.float32), b) for b in feeds]


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean cosine between matching rows of reference and candidate outputs (1.0: identical directions)."""
    ref = np.concatenate(reference).astype(np.float64)
    cand = np.concatenate(candidate).astype(np.float64)
    num = (ref * cand).sum(-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))

"""Model inputs: what the graph declares, checking and reading arrays for it (npz, one array per input,
first axis = samples), and splitting samples into runs that the declared shapes accept.

Static shapes: a model exported with a fixed batch (often 1) only runs that many rows at once, so
every pass over calibration or training data goes through `runs`; a fixed non-batch axis (a sequence
length) that the data does not have is an error naming the input and both shapes.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from .errors import BadInputError

Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype (None when numpy has no such type) and declared dims."""

    name: str
    dtype: np.dtype | None
    dims: tuple[Dim, ...] | None  # None: rank unknown

    @property
    def batch(self) -> int | None:
        """The fixed size of axis 0 (the sample axis), or None when it is free."""
        return self.dims[0] if self.dims and isinstance(self.dims[0], int) else None

    def declared(self) -> str:
        return "unknown" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


@dataclasses.dataclass
class Run:
    """Feeds for one onnxruntime run; the first `rows` rows are real samples (the rest repeat the last
    sample, filling a fixed batch)."""

    feeds: dict[str, np.ndarray]
    rows: int


def input_specs(model: onnx.ModelProto | ir.Model) -> list[InputSpec]:
    """The graph inputs that are not initializers, in order."""
    if isinstance(model, ir.Model):
        specs = []
        for value in model.graph.inputs:
            if value.is_initializer():
                continue
            dtype = value.dtype.numpy() if value.dtype is not None and _numpy_ok(value.dtype) else None
            dims = None if value.shape is None else tuple(
                d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None) for d in value.shape)
            specs.append(InputSpec(value.name, dtype, dims))
        return specs
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for info in model.graph.input:
        if info.name in inits:
            continue
        tensor = info.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim) \
            if tensor.HasField("shape") else None
        specs.append(InputSpec(info.name, dtype, dims))
    return specs


def _numpy_ok(dtype: ir.DataType) -> bool:
    try:
        return np.dtype(dtype.numpy()).kind in "biufc"
    except (TypeError, ValueError):
        return False


def check_inputs(model, arrays: Mapping[str, np.ndarray], where: str = "inputs", *,
                 extra: Collection[str] = ()) -> int:
    """The number of samples; every graph input present with its rank, dtype kind and fixed per-sample
    axes, the same number of samples in each, no unknown arrays (besides `extra`)."""
    specs = {s.name: s for s in input_specs(model)}
    missing = sorted(set(specs) - set(arrays))
    unknown = sorted(set(arrays) - set(specs) - set(extra))
    if missing or unknown:
        raise BadInputError(f"{where}: arrays {sorted(arrays)} do not match the graph inputs {sorted(specs)}"
                            f" (missing {missing}, unexpected {unknown})")
    counts = {}
    for name, spec in specs.items():
        array = np.asarray(arrays[name])
        if spec.dims is not None and array.ndim != len(spec.dims):
            raise BadInputError(f"{where}: array '{name}' has shape {list(array.shape)}, the input has rank "
                                f"{len(spec.dims)} (declared {spec.declared()})")
        if array.ndim == 0:
            raise BadInputError(f"{where}: array '{name}' is a scalar; the first axis must count samples")
        if spec.dtype is not None and spec.dtype.kind != array.dtype.kind:
            raise BadInputError(f"{where}: array '{name}' has dtype {array.dtype}, the input wants {spec.dtype}")
        if spec.dims is not None:
            for axis, (want, have) in enumerate(zip(spec.dims[1:], array.shape[1:]), start=1):
                if isinstance(want, int) and want != have:
                    raise BadInputError(
                        f"{where}: input '{name}' is declared {spec.declared()}, the given samples have shape "
                        f"{list(array.shape)}: axis {axis} must be {want}, got {have} (the model was exported "
                        "with a fixed size there)")
        counts[name] = array.shape[0]
    if len(set(counts.values())) > 1:
        raise BadInputError(f"{where}: arrays have different numbers of samples {counts}")
    count = next(iter(counts.values()), 0)
    if count == 0:
        raise BadInputError(f"{where}: no samples")
    return count


#: Largest run made by repeating samples to fill a model's fixed batch (a declared batch is the file's word,
#: not a size the data backs: 2^40 rows must be refused, not allocated).
MAX_PADDED_RUN_BYTES = 1 << 30


def run_size(model, wanted: int) -> int:
    """Rows per run: the declared batch when the model fixes it, else `wanted`."""
    fixed = {s.name: s.batch for s in input_specs(model) if s.batch is not None}
    sizes = set(fixed.values())
    if len(sizes) > 1:
        raise BadInputError(f"graph inputs fix different batch sizes {fixed}; cannot split data into runs")
    if sizes and 0 in sizes:
        raise BadInputError(f"graph inputs declare a batch of 0 {fixed}")
    return sizes.pop() if sizes else max(1, wanted)


def runs(model, arrays: Mapping[str, np.ndarray], size: int, *, start: int = 0, stop: int | None = None,
         names: Sequence[str] | None = None) -> list[Run]:
    """Samples `start:stop` as runs of `size` rows, or of the model's fixed batch when it declares one
    (the last run of a fixed batch is filled up by repeating its last sample; `Run.rows` says how many
    rows are real). Only the arrays in `names` (default: the graph inputs) go into the feeds."""
    rows = run_size(model, size)
    names = [s.name for s in input_specs(model)] if names is None else list(names)
    total = len(next(iter(arrays.values())))
    stop = total if stop is None else stop
    fixed = rows if any(s.batch is not None for s in input_specs(model)) else None
    if fixed is not None and fixed > stop - start:  # the batch is filled up by repeating samples
        per_sample = sum(np.asarray(arrays[n])[:1].nbytes for n in names)
        if fixed * per_sample > MAX_PADDED_RUN_BYTES:
            raise BadInputError(f"graph inputs fix a batch of {fixed} rows: filling one run up to it from "
                                f"{stop - start} samples would take {fixed * per_sample} bytes (more than "
                                f"{MAX_PADDED_RUN_BYTES}); give at least {fixed} samples")
    result = []
    for first in range(start, stop, rows):
        last = min(first + rows, stop)
        feeds = {n: np.asarray(arrays[n])[first:last] for n in names}
        if fixed is not None and last - first < fixed:
            pad = np.full(fixed - (last - first), last - first - 1)
            feeds = {n: np.concatenate([v, v[pad]]) for n, v in feeds.items()}
        result.append(Run(feeds, last - first))
    return result


def as_run(feeds: Run | Mapping[str, np.ndarray]) -> Run:
    if isinstance(feeds, Run):
        return feeds
    first = next(iter(feeds.values()), None)
    return Run(dict(feeds), 0 if first is None or np.ndim(first) == 0 else len(first))


def load_arrays(path: str | os.PathLike, where: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz file, never unpickling, each array's size checked against the bytes the
    archive holds for it before it is read."""
    where = where or str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    _check_npy_header(member, info, where)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except BadInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{where}: not a readable .npz file: {text}") from err


def _check_npy_header(member, info: zipfile.ZipInfo, where: str) -> None:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"'{info.filename}': unsupported .npy version {version}")
    if dtype.hasobject:
        raise BadInputError(f"{where}: array '{info.filename}' holds Python objects (pickles are never loaded)")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = info.file_size - member.tell()
    if need > have:
        raise BadInputError(f"{where}: array '{info.filename.removesuffix('.npy')}' claims shape {list(shape)} of "
                            f"{dtype} ({need} bytes) but the archive holds {have} bytes for it")


def load_inputs(path: str | os.PathLike, model, where: str | None = None, *,
                extra: Collection[str] = ()) -> dict[str, np.ndarray]:
    """`load_arrays` + `check_inputs`: model inputs from an .npz file, ready for `runs`."""
    arrays = load_arrays(path, where)
    check_inputs(model, arrays, where or str(path), extra=extra)
    return arrays

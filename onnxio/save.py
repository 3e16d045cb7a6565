"""The one atomic writer: every output (models with their external data, JSON, npz, checkpoints,
folders) is written into a temporary folder beside its target and moved into place only when complete.

A failure, Ctrl-C or SIGTERM at any point leaves neither the output nor a temporary file; an existing
output is replaced only when asked (`force=True`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .errors import BadInputError
from .signals import signals_deferred, sigterm_unwinds

#: Serialized size above which a model's weights go to a side file `<name>.data` (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
#: Tensors smaller than this stay inside the .onnx file even when the weights go to a side file.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def refuse_to_clobber(paths: Sequence[str | os.PathLike], force: bool) -> None:
    """`BadInputError` if one of `paths` exists and `force` is not set."""
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and not force:
            raise BadInputError(f"{path} exists; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_files(targets: Sequence[str | os.PathLike], *, force: bool = False) -> Iterator[list[Path]]:
    """Yield temporary paths, one per target (same names, in a temporary folder beside each target);
    when the block ends normally every one that was written (a file or a folder) is moved onto its
    target, else all are removed.

    The moves happen together with SIGINT/SIGTERM held back, and one that fails takes back those before
    it, so an interruption never leaves part of a result (a model's .onnx without its .data, a model
    without its report).
    """
    targets = [Path(t) for t in targets]
    if not targets:
        raise ValueError("atomic_files: no targets")
    if len({t.resolve() for t in targets}) != len(targets):
        raise ValueError(f"atomic_files: targets {[str(t) for t in targets]} repeat")
    refuse_to_clobber(targets, force)
    folders: dict[Path, Path] = {}
    with sigterm_unwinds():
        try:
            try:
                for target in targets:
                    if target.parent not in folders:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with signals_deferred():  # a folder made is a folder recorded (for `finally`)
                            folders[target.parent] = Path(tempfile.mkdtemp(prefix=f".{target.name}.",
                                                                           suffix=".tmp", dir=target.parent))
            except OSError as err:
                raise BadInputError(f"{target.parent}: cannot write here: {err.strerror or err}") from err
            temporary = [folders[t.parent] / t.name for t in targets]
            yield temporary
            written = [(src, dst) for src, dst in zip(temporary, targets) if src.exists()]
            with signals_deferred():
                moved = []
                try:
                    for k, (src, dst) in enumerate(written):
                        refuse_to_clobber([dst], force)  # it may have appeared while we worked
                        if dst.is_dir() and not dst.is_symlink():  # a folder cannot be replaced in one rename
                            os.replace(dst, src.parent / f".replaced.{k}")  # removed with the temporary folder
                        os.replace(src, dst)
                        moved.append(dst)
                except BaseException:
                    for dst in moved:  # all or nothing: the ones already moved go again
                        shutil.rmtree(dst) if dst.is_dir() else dst.unlink(missing_ok=True)
                    raise
        except OSError as err:  # a full disk, a read-only folder: bad input of the run, not a bug
            if err.errno is None:
                raise
            raise BadInputError(f"{targets[0]}: writing failed: {err.strerror or err}") from err
        finally:
            with signals_deferred():  # an interruption does not cut the removal short
                for tmp in folders.values():
                    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """One output file: `with atomic_output(p) as tmp: write(tmp)`."""
    with atomic_files([path], force=force) as (tmp,):
        yield tmp


def write_text(path: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(data: object, *, sort_keys: bool = False) -> str:
    """JSON with a final newline (numpy scalars and arrays written as numbers and lists)."""
    return json.dumps(data, indent=2, sort_keys=sort_keys, default=_plain) + "\n"


def write_json(path: str | os.PathLike, data: object, *, force: bool = False, sort_keys: bool = False) -> Path:
    return write_text(path, json_text(data, sort_keys=sort_keys), force=force)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *, force: bool = False) -> Path:
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # to a file object: numpy would otherwise append ".npz" to the name
    return Path(path)


def model_files(model: onnx.ModelProto | ir.Model, path: str | os.PathLike, external_data: bool | None = None
                ) -> list[Path]:
    """The files that saving `model` to `path` writes: `path`, and `<path>.data` when the weights go to a
    side file (when asked, when the model is large, or when an in-memory model still reads weights from
    its source's side file)."""
    path = Path(path)
    if isinstance(model, ir.Model):
        external_data = bool(external_data) or _has_external_tensors(model) or (
            external_data is None and _tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD)
    elif external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    return [path, path.with_name(path.name + ".data")] if external_data else [path]


def save_model(model: onnx.ModelProto | ir.Model, path: str | os.PathLike, *, external_data: bool | None = None,
               force: bool = False) -> Path:
    """Write `model` to `path` atomically (with `<path>.data` as `model_files` says). The caller's model is
    not changed."""
    files = model_files(model, path, external_data)
    with atomic_files(files, force=force) as temporary:
        write_model(model, temporary)
    return Path(path)


def write_model(model: onnx.ModelProto | ir.Model, files: Sequence[Path]) -> None:
    """Write `model` to the (temporary) paths `model_files` named: the .onnx and, if listed, its .data."""
    tmp = Path(files[0])
    data_name = tmp.name + ".data" if len(files) > 1 else None
    if isinstance(model, ir.Model):
        ir.save(model, tmp, external_data=data_name, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES)
    elif data_name:  # onnx moves tensors out of the proto it is given: work on a copy
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=EXTERNAL_TENSOR_MIN_BYTES)
    else:
        onnx.save_model(model, str(tmp))


def _has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for g in model.graphs() for v in g.initializers.values())


def _tensor_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None)

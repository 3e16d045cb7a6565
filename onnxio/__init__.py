"""quweit's one ONNX I/O layer, used by every stage, benchmark and test (no torch, no TVM).

- `load_model` / `load_ir`: read a model with its checks (sizes against bytes, external data only
  from inside the model's folder, onnx's checker); `BadInputError` names the file and the problem.
- `save_model`, `atomic_output`, `atomic_files`, `write_json`, `write_npz`, `write_text` (and
  `model_files`/`write_model`/`json_text` to write a model and its report as one group): the one atomic
  writer (temporary files beside the targets, removed on any failure, Ctrl-C or SIGTERM; all moved
  together or none; existing outputs replaced only with `force`).
- `make_session` / `session_options`: the one onnxruntime session factory (kernel registration,
  threads, models beyond 2 GiB).
- `capture`, `probe_session`, `collect`, `first_output`, `token_rows`: the one activation capture.
- `synthetic_inputs`: the one synthetic-input policy.
- `input_specs`, `check_inputs`, `load_arrays`, `load_inputs`, `runs`, `Run`: model inputs, and their
  split into runs that the model's declared (possibly static) shapes accept.
"""

from .capture import MASK_INPUT, capture, collect, first_output, probe_session, token_rows
from .errors import EXIT_BAD_INPUT, BadInputError
from .inputs import (
    InputSpec,
    Run,
    as_run,
    check_inputs,
    input_specs,
    load_arrays,
    load_inputs,
    run_size,
    runs,
)
from .load import MIN_OPSET, default_opset, has_external_data, load_ir, load_model, upgrade_opset
from .save import (
    EXTERNAL_DATA_THRESHOLD,
    atomic_files,
    atomic_output,
    json_text,
    model_files,
    refuse_to_clobber,
    save_model,
    write_json,
    write_model,
    write_npz,
    write_text,
)
from .session import ONNXRUNTIME_ERRORS, make_session, session_options
from .signals import EXIT_TERMINATED, Terminated, signals_deferred, sigterm_unwinds
from .synthetic import embedding_rows, synthetic_inputs

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_TERMINATED",
    "EXTERNAL_DATA_THRESHOLD",
    "MASK_INPUT",
    "MIN_OPSET",
    "ONNXRUNTIME_ERRORS",
    "BadInputError",
    "InputSpec",
    "Run",
    "Terminated",
    "as_run",
    "atomic_files",
    "atomic_output",
    "capture",
    "check_inputs",
    "collect",
    "default_opset",
    "embedding_rows",
    "first_output",
    "has_external_data",
    "input_specs",
    "json_text",
    "load_arrays",
    "load_inputs",
    "load_ir",
    "load_model",
    "make_session",
    "model_files",
    "probe_session",
    "refuse_to_clobber",
    "run_size",
    "runs",
    "save_model",
    "session_options",
    "signals_deferred",
    "sigterm_unwinds",
    "synthetic_inputs",
    "token_rows",
    "upgrade_opset",
    "write_json",
    "write_model",
    "write_npz",
    "write_text",
]

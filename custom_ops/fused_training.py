"""The training forward and backward of a whole `WeightlessBlock` as two native calls (fused ops).

The per-stage torch path (thermometer -> `select_bits` -> `lut_layer` per layer -> conditional sum) writes
every LUT input as a float (`[B, L * n]`, 150 MB for a MiniLM block at 2048 tokens) and gathers and
scatters it several times; its training step cost 2.2x the dense MLP's. `runtime/src/train_block.cc` does the
same arithmetic with each token's bits in a small buffer and saves one address byte per (token, LUT) for the
backward (`python bench/train_step.py`). It is called through ctypes on tensor data pointers, so building it
needs only g++ (no torch headers); `pip install .` builds it beside the onnxruntime kernel.

Numerics, against the per-stage path (tests/test_fused_training.py):
- forward: bit for bit. The conditional sum is exact in both (integer-valued terms summed in float64 and
  rounded once), so training mode equals the op's integer semantics whenever the accumulator fits int32;
- gradients: the same float32 products (`g * EFD weight`, `grad_acc * value`, the thermometer surrogate);
  table and input-bit gradients are summed in the per-stage path's order as well, the thermometer's T terms
  in order, and value and bias gradients in float64 - so they differ from the per-stage path (torch's own
  reductions) only by float32 summation order: within a few float32 ulps of the largest term
  (tests: rtol 1e-5, atol 1e-6 relative to the gradient scale).
- deterministic and independent of the thread count: every output element is summed by one thread in a
  fixed order (token chunks for the forward and input gradients, LUT blocks for table and value gradients).

Used for one candidate per mapping slot (the exported mapping is fixed); the learnable mapping
(`candidates > 1`) stays on the per-stage path. Set `QUWEIT_FUSED_TRAINING=0` to use the per-stage path
everywhere; without the library (`QUWEIT_SKIP_KERNEL=1` installs) it is used automatically.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from .efd import _efd_matrix_cached
from .errors import WeightlessBlockError

#: "0" turns the fused ops off (the per-stage torch path trains every block).
ENABLE_ENV = "QUWEIT_FUSED_TRAINING"
_ERROR_SIZE = 512


class _Block(ctypes.Structure):
    """Mirror of `QuweitTrainBlock` (runtime/src/train_block.h)."""

    _fields_ = [
        ("tokens", ctypes.c_int64),
        ("in_features", ctypes.c_int32),
        ("thresholds_per_feature", ctypes.c_int32),
        ("lut_inputs", ctypes.c_int32),
        ("num_layers", ctypes.c_int32),
        ("out_features", ctypes.c_int32),
        ("group_size", ctypes.c_int32),
        ("qmin", ctypes.c_float),
        ("qmax", ctypes.c_float),
        ("layer_sizes", ctypes.c_void_p),
        ("input_scale", ctypes.c_void_p),
        ("thresholds", ctypes.c_void_p),
        ("surrogate_width", ctypes.c_void_p),
        ("mapping", ctypes.c_void_p),
        ("tables", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from quweit.runtime import LibraryNotBuiltError, get_train_library_path

    try:
        library = ctypes.CDLL(get_train_library_path())
    except LibraryNotBuiltError:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    library.quweit_train_forward.argtypes = [ctypes.POINTER(_Block), pointer, pointer, pointer, ctypes.c_int,
                                             ctypes.c_char_p, size]
    library.quweit_train_backward.argtypes = [ctypes.POINTER(_Block), pointer, pointer, pointer, pointer, pointer,
                                              pointer, pointer, pointer, ctypes.c_int, ctypes.c_char_p, size]
    for function in (library.quweit_train_forward, library.quweit_train_backward):
        function.restype = ctypes.c_int
    return library


def enabled() -> bool:
    """The fused ops are built and not turned off by `QUWEIT_FUSED_TRAINING=0`."""
    return os.environ.get(ENABLE_ENV, "1") != "0" and _library() is not None


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() if t is not None else None for t in tensors])


def _check(status: int, error: ctypes.Array, node: str | None) -> None:
    if status != 0:
        raise WeightlessBlockError("training", error.value.decode(errors="replace"), node=node)


class _Plan:
    """The fixed part of a block's training call: structure, scales, thresholds and int32 mappings."""

    def __init__(self, module, tokens: int) -> None:
        self.module = module
        self.mappings = [module.candidates(k)[:, 0].to(torch.int32).contiguous() for k in range(len(module.tables))]
        self.layer_sizes = torch.tensor(module.layer_sizes, dtype=torch.int32)
        self.tokens = tokens

    def struct(self, tables, values: torch.Tensor, bias: torch.Tensor) -> tuple[_Block, list]:
        m = self.module
        mapping, table_ptrs = _pointers(self.mappings), _pointers(tables)
        block = _Block(
            tokens=self.tokens, in_features=m.in_features, thresholds_per_feature=m.thresholds.shape[1],
            lut_inputs=m.lut_inputs, num_layers=len(tables), out_features=m.out_features, group_size=m.group_size,
            qmin=m.qmin, qmax=m.qmax, layer_sizes=self.layer_sizes.data_ptr(), input_scale=m.input_scale.data_ptr(),
            thresholds=m.thresholds.data_ptr(), surrogate_width=m.surrogate_width.data_ptr(),
            mapping=ctypes.cast(mapping, ctypes.c_void_p), tables=ctypes.cast(table_ptrs, ctypes.c_void_p),
            values=values.data_ptr(), bias=bias.data_ptr())
        return block, [mapping, table_ptrs]  # the pointer arrays must outlive the call


class FusedBlock(torch.autograd.Function):
    """`(plan, x [B, D_in], values [L_last], bias [D_out], *tables) -> accumulators [B, D_out]`."""

    @staticmethod
    def forward(ctx, plan: _Plan, x, values, bias, *tables):
        acc = torch.empty(plan.tokens, plan.module.out_features)
        addresses = [torch.empty(plan.tokens, t.shape[0], dtype=torch.uint8) for t in tables]
        block, keep = plan.struct(tables, values, bias)
        error = ctypes.create_string_buffer(_ERROR_SIZE)
        status = _library().quweit_train_forward(ctypes.byref(block), x.data_ptr(), acc.data_ptr(),
                                                 _pointers(addresses), torch.get_num_threads(), error, _ERROR_SIZE)
        del keep
        _check(status, error, plan.module.node)
        ctx.plan, ctx.addresses = plan, addresses
        ctx.save_for_backward(x, values, bias, *tables)
        return acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_acc):
        plan, addresses = ctx.plan, ctx.addresses
        x, values, bias, *tables = ctx.saved_tensors
        want_x, want_values, want_bias = ctx.needs_input_grad[1:4]
        want_tables = ctx.needs_input_grad[4:]
        grad_x = torch.empty_like(x) if want_x else None
        grad_values = torch.empty_like(values) if want_values else None
        grad_bias = torch.empty_like(bias) if want_bias else None
        grad_tables = [torch.empty_like(t) if w else None for t, w in zip(tables, want_tables)]
        # EFD weights per (LUT, address, slot), as efd.LutLayerEFD computes them, for every layer whose
        # input gradient is needed (for x, or for the tables of a lower layer).
        per_address, below = [], want_x
        for k, table in enumerate(tables):
            if below:
                matrix = _efd_matrix_cached(plan.module.lut_inputs).to(table.dtype)
                per_address.append(torch.einsum("lak,rk->ral", matrix, table).contiguous())
            else:
                per_address.append(None)
            below = below or want_tables[k]
        grad_acc = grad_acc.contiguous()  # kept in a name: a temporary would be freed before the call
        block, keep = plan.struct(tables, values, bias)
        error = ctypes.create_string_buffer(_ERROR_SIZE)
        status = _library().quweit_train_backward(
            ctypes.byref(block), x.data_ptr(), _pointers(addresses), _pointers(per_address),
            grad_acc.data_ptr(), grad_x.data_ptr() if want_x else None, _pointers(grad_tables),
            grad_values.data_ptr() if want_values else None, grad_bias.data_ptr() if want_bias else None,
            torch.get_num_threads(), error, _ERROR_SIZE)
        del keep
        _check(status, error, plan.module.node)
        return (None, grad_x, grad_values, grad_bias, *grad_tables)


def accumulators(module, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The conditional sums `[B, D_out]` (before the output scale) of `module` in training mode, fused.

    `values` and `bias` are the rounded (integer-valued) encoded values and biases in integer units."""
    tensors = {"X": x, "encoded_values": values, "bias": bias, **{f"tables[{k}]": t for k, t in enumerate(module.tables)}}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            raise WeightlessBlockError(name, f"must be a float32 CPU tensor, got {tensor.dtype} on {tensor.device}",
                                       node=module.node)
    plan = _Plan(module, x.shape[0])
    # Tables stay the autograd inputs; their storage must be contiguous for the native call.
    if not all(t.is_contiguous() for t in module.tables):
        raise WeightlessBlockError("tables", "must be contiguous", node=module.node)
    return FusedBlock.apply(plan, x.contiguous(), values.contiguous(), bias.contiguous(), *module.tables)

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
- gradients: the same float32 products (`g * EFD weight`, `grad_acc * value`, the thermometer surrogate,
  the slot gradient's share per candidate). Table and input-bit gradients are summed in the per-stage path's
  order too (its `index_add_`s), value and bias gradients in float64 (as the per-stage path now does, but
  torch reduces in its own order), the thermometer's T terms in order, the mapping weights' in float32 lanes
  per chunk of tokens then float64 (the per-stage path: a float32 einsum per chunk). So they differ from the
  per-stage path only by summation order: a few float32 ulps of the largest term (tests: rtol 1e-5 and atol
  1e-6 times the gradient's largest magnitude). At the sizes tested most gradients come out bit-identical.
- deterministic and independent of the thread count: every output element is summed by one thread in a
  fixed order (token chunks for the forward and input gradients, LUT blocks for table, value and
  mapping-weight gradients).

The learnable mapping (`candidates > 1`) is fused as well: the forward reads each slot's chosen candidate
and keeps each layer's input bits as one packed row of tokens per bit; the backward spreads each slot's
gradient over its candidates (input bits) and sums each candidate's weight gradient against its row.
Set `QUWEIT_FUSED_TRAINING=0` to use the per-stage path everywhere; without the library
(`QUWEIT_SKIP_KERNEL=1` installs) it is used automatically.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from .efd import efd_weights
from .errors import WeightlessBlockError
from .learnable_mapping import chosen_indices

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
        ("candidates", ctypes.c_int32),
        ("candidate_bits", ctypes.c_void_p),
        ("candidate_spread", ctypes.c_void_p),
    ]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from quweit.runtime import LibraryNotBuiltError, get_train_library_path

    try:
        library = ctypes.CDLL(get_train_library_path())
    except LibraryNotBuiltError:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    library.quweit_train_forward.argtypes = [ctypes.POINTER(_Block), pointer, pointer, pointer, pointer, ctypes.c_int,
                                             ctypes.c_char_p, size]
    library.quweit_train_backward.argtypes = [ctypes.POINTER(_Block), pointer, pointer, pointer, pointer, pointer,
                                              pointer, pointer, pointer, pointer, pointer, ctypes.c_int,
                                              ctypes.c_char_p, size]
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
    """The fixed part of a block's training call: structure, scales, thresholds, int32 mappings and, for a
    learnable mapping, the candidates and their gradient shares."""

    def __init__(self, module, tokens: int) -> None:
        self.module = module
        self.tokens = tokens
        layers = range(len(module.tables))
        weights = [module._weights(k) for k in layers]
        self.candidates = module.candidates(0).shape[1]
        self.mappings = [chosen_indices(module.candidates(k), weights[k]).to(torch.int32).contiguous() for k in layers]
        self.layer_sizes = torch.tensor(module.layer_sizes, dtype=torch.int32)
        # Buffers may be views of any layout (fitted thresholds often come Fortran-ordered): C-contiguous copies.
        self.input_scale, self.thresholds, self.surrogate_width = (
            b.to(torch.float32).contiguous() for b in (module.input_scale, module.thresholds, module.surrogate_width))
        self.candidate_bits = self.spread = []
        if self.candidates > 1:
            self.candidate_bits = [module.candidates(k).to(torch.int32).contiguous() for k in layers]
            with torch.no_grad():
                self.spread = [torch.softmax(w / module.tau, dim=1).contiguous() for w in weights]

    def struct(self, tables, values: torch.Tensor, bias: torch.Tensor) -> tuple[_Block, list]:
        m = self.module
        arrays = [_pointers(a) for a in (self.mappings, tables, self.candidate_bits, self.spread)]
        mapping, table_ptrs, candidate_bits, spread = (ctypes.cast(a, ctypes.c_void_p) for a in arrays)
        block = _Block(
            tokens=self.tokens, in_features=m.in_features, thresholds_per_feature=m.thresholds.shape[1],
            lut_inputs=m.lut_inputs, num_layers=len(tables), out_features=m.out_features, group_size=m.group_size,
            qmin=m.qmin, qmax=m.qmax, layer_sizes=self.layer_sizes.data_ptr(), input_scale=self.input_scale.data_ptr(),
            thresholds=self.thresholds.data_ptr(), surrogate_width=self.surrogate_width.data_ptr(), mapping=mapping,
            tables=table_ptrs, values=values.data_ptr(), bias=bias.data_ptr(), candidates=self.candidates,
            candidate_bits=candidate_bits, candidate_spread=spread)
        return block, arrays  # the pointer arrays must outlive the call


class FusedBlock(torch.autograd.Function):
    """`(plan, x [B, D_in], values [L_last], bias [D_out], *tables, *mapping_weights) -> accumulators [B, D_out]`.

    `mapping_weights` (one `[L_k * n, C]` per layer) only with a learnable mapping (C > 1)."""

    @staticmethod
    def forward(ctx, plan: _Plan, x, values, bias, *parameters):
        layers = len(plan.mappings)
        tables = parameters[:layers]
        acc = torch.empty(plan.tokens, plan.module.out_features)
        addresses = [torch.empty(plan.tokens, t.shape[0], dtype=torch.uint8) for t in tables]
        # Layer inputs, one row of packed tokens per input bit (uint64 words, held as int64), read by the
        # mapping-weight gradient.
        widths = (plan.module.thresholds.numel(), *plan.module.layer_sizes[:-1])
        words = (plan.tokens + 63) // 64
        input_bits = [torch.empty(w, words, dtype=torch.int64) for w in widths] if plan.candidates > 1 else []
        block, keep = plan.struct(tables, values, bias)
        error = ctypes.create_string_buffer(_ERROR_SIZE)
        status = _library().quweit_train_forward(
            ctypes.byref(block), x.data_ptr(), acc.data_ptr(), _pointers(addresses),
            _pointers(input_bits) if input_bits else None, torch.get_num_threads(), error, _ERROR_SIZE)
        del keep
        _check(status, error, plan.module.node)
        ctx.plan, ctx.addresses, ctx.input_bits = plan, addresses, input_bits
        ctx.save_for_backward(x, values, bias, *parameters)
        return acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_acc):
        plan, addresses, input_bits = ctx.plan, ctx.addresses, ctx.input_bits
        x, values, bias, *parameters = ctx.saved_tensors
        layers = len(plan.mappings)
        tables, weights = parameters[:layers], parameters[layers:]
        want_x, want_values, want_bias = ctx.needs_input_grad[1:4]
        want_tables = ctx.needs_input_grad[4 : 4 + layers]
        want_weights = ctx.needs_input_grad[4 + layers :] or (False,) * layers
        grad_x = torch.empty_like(x) if want_x else None
        grad_values = torch.empty_like(values) if want_values else None
        grad_bias = torch.empty_like(bias) if want_bias else None
        grad_tables = [torch.empty_like(t) if w else None for t, w in zip(tables, want_tables)]
        grad_weights = [torch.empty_like(w) if want else None for w, want in zip(weights, want_weights)]
        # EFD weights per (LUT, address, slot), as efd.LutLayerEFD computes them, for every layer whose input
        # gradient is needed (for x, or for the tables or mapping weights of a lower layer) or whose mapping
        # weights are trained.
        per_address, below = [], want_x
        for k, table in enumerate(tables):
            per_address.append(efd_weights(table, plan.module.lut_inputs).contiguous()
                               if below or want_weights[k] else None)
            below = below or want_tables[k] or want_weights[k]
        grad_acc = grad_acc.contiguous()  # kept in a name: a temporary would be freed before the call
        block, keep = plan.struct(tables, values, bias)
        error = ctypes.create_string_buffer(_ERROR_SIZE)
        status = _library().quweit_train_backward(
            ctypes.byref(block), x.data_ptr(), _pointers(addresses), _pointers(input_bits) if input_bits else None,
            _pointers(per_address), grad_acc.data_ptr(), grad_x.data_ptr() if want_x else None,
            _pointers(grad_tables), grad_values.data_ptr() if want_values else None,
            grad_bias.data_ptr() if want_bias else None, _pointers(grad_weights) if grad_weights else None,
            torch.get_num_threads(), error, _ERROR_SIZE)
        del keep
        _check(status, error, plan.module.node)
        return (None, grad_x, grad_values, grad_bias, *grad_tables, *grad_weights)


def accumulators(module, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The conditional sums `[B, D_out]` (before the output scale) of `module` in training mode, fused.

    `values` and `bias` are the rounded (integer-valued) encoded values and biases in integer units."""
    tensors = {"X": x, "encoded_values": values, "bias": bias, **{f"tables[{k}]": t for k, t in enumerate(module.tables)},
               **{f"mapping_weights[{k}]": w for k, w in enumerate(module.mapping_weights)}}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            raise WeightlessBlockError(name, f"must be a float32 CPU tensor, got {tensor.dtype} on {tensor.device}",
                                       node=module.node)
    plan = _Plan(module, x.shape[0])
    parameters = [*module.tables, *module.mapping_weights]
    # Parameters stay the autograd inputs; their storage must be contiguous for the native call.
    if not all(p.is_contiguous() for p in parameters):
        raise WeightlessBlockError("tables", "tables and mapping weights must be contiguous", node=module.node)
    return FusedBlock.apply(plan, x.contiguous(), values.contiguous(), bias.contiguous(), *parameters)

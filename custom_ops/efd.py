"""Extended Finite Difference (EFD, DWN paper): a LUT layer whose tables and inputs get gradients.

Forward: table entries `A[r, k]` are reals (in [-1, 1] while training); LUT `r` outputs the bit
`A[r, a] > 0` at its address `a` (straight-through). Backward (as torch-dwn defines it):
`dL/dA[r, a] += g` and, for address bit `l`,
`dL/dbit_l = g * alpha * sum_k s_l(k) * A[r, k] * beta ** popcount((a ^ k) & ~(1 << l))`,
`s_l(k) = +1 if bit l of k else -1`, `alpha = 0.5 * 0.75 ** (n - 1)`, `beta = 1/3`.

This is our own vectorised CPU version: the sum over `k` is one precomputed matrix per slot
(`efd_matrix`), so the input gradient costs one small einsum per layer plus a gather per sample;
scatters use `index_add_`, which is deterministic on CPU.
"""

from __future__ import annotations

import functools

import torch

BETA = 1.0 / 3.0


def efd_alpha(lut_inputs: int) -> float:
    return 0.5 * 0.75 ** (lut_inputs - 1)


@functools.lru_cache(maxsize=16)
def _efd_matrix_cached(lut_inputs: int) -> torch.Tensor:
    entries = 1 << lut_inputs
    a = torch.arange(entries)[:, None]
    k = torch.arange(entries)[None, :]
    slots = []
    for l in range(lut_inputs):
        sign = torch.where((k >> l) & 1 == 1, 1.0, -1.0)
        differ = (a ^ k) & ((entries - 1) & ~(1 << l))
        popcount = sum(((differ >> b) & 1) for b in range(lut_inputs))
        slots.append(efd_alpha(lut_inputs) * sign * BETA ** popcount.double())
    return torch.stack(slots).to(torch.float32)  # [n, 2^n (address a), 2^n (entry k)]


def efd_matrix(lut_inputs: int) -> torch.Tensor:
    """`M[l, a, k]`: the EFD input-gradient weight of table entry `k` for address `a` and slot `l`."""
    return _efd_matrix_cached(lut_inputs).clone()


def efd_weights(tables: torch.Tensor, lut_inputs: int) -> torch.Tensor:
    """`[L, 2^n, n]`: the input-gradient weight of slot `l` of LUT `r` at address `a`, for these tables
    (one small matrix product; the forward's address then picks one row per sample)."""
    matrix = _efd_matrix_cached(lut_inputs).to(tables.dtype)
    return torch.einsum("lak,rk->ral", matrix, tables)


def lut_addresses(slot_bits: torch.Tensor) -> torch.Tensor:
    """0/1 bits `[B, L, n]` -> int64 addresses `[B, L]`, slot `l` driving address bit `l`.

    Computed as a float matrix-vector product (exact: addresses < 2^8), far cheaper than int64 shifts.
    """
    n = slot_bits.shape[-1]
    weights = (2.0 ** torch.arange(n, device=slot_bits.device)).to(slot_bits.dtype)
    return (slot_bits.reshape(-1, n) @ weights).reshape(slot_bits.shape[:-1]).to(torch.int64)


class LutLayerEFD(torch.autograd.Function):
    """`(slot_bits [B, L, n], tables [L, 2^n]) -> bits [B, L]` with EFD gradients to both."""

    @staticmethod
    def forward(ctx, slot_bits: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        rows, entries = tables.shape
        flat = torch.arange(rows, device=tables.device) * entries + lut_addresses(slot_bits)
        ctx.save_for_backward(flat, tables)
        ctx.lut_inputs = slot_bits.shape[-1]
        return (torch.take(tables, flat) > 0).to(tables.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, tables = ctx.saved_tensors
        rows, entries = tables.shape
        grad_tables = None
        if ctx.needs_input_grad[1]:
            grad_tables = torch.zeros(rows * entries, dtype=grad.dtype, device=grad.device)
            grad_tables = grad_tables.index_add_(0, flat.reshape(-1), grad.reshape(-1)).reshape(rows, entries)
        grad_bits = None
        if ctx.needs_input_grad[0]:
            per_address = efd_weights(tables, ctx.lut_inputs).reshape(rows * entries, ctx.lut_inputs)
            picked = torch.index_select(per_address, 0, flat.reshape(-1)).reshape(*flat.shape, ctx.lut_inputs)
            grad_bits = grad[..., None] * picked
        return grad_bits, grad_tables


def lut_layer(slot_bits: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    return LutLayerEFD.apply(slot_bits, tables)

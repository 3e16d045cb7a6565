"""Which input bit each LUT slot reads, learnable among a bounded candidate subset per slot.

DWN's learnable mapping keeps a weight for every (input bit, slot) pair: `N_in * L * n` weights, far too
many for thousands of thermometer bits and thousands of LUTs. Here each slot `s` chooses among `C`
candidate bits `candidates[s]` (memory `S * C`), with DWN's rules restricted to them: forward reads the
candidate of largest weight; backward gives the weights `sum_b (2 x[b, cand] - 1) * g[b, s]` and the
input bits `softmax(weights[s] / tau) * g[b, s]` at each candidate. With `C = 1` it is a fixed mapping
whose gradient flows straight to the bit it reads.
"""

from __future__ import annotations

import torch

#: Samples per chunk when forming the `[B, S, C]` weight gradient, to bound memory.
CHUNK = 256


def chosen_indices(candidates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The bit each slot reads: `candidates[s, argmax weights[s]]` (first maximum on ties)."""
    if weights is None or candidates.shape[1] == 1:
        return candidates[:, 0]
    return candidates.gather(1, weights.argmax(1, keepdim=True))[:, 0]


class SelectBits(torch.autograd.Function):
    """`(bits [B, N], candidates [S, C], weights [S, C] | None, tau) -> slot bits [B, S]`."""

    @staticmethod
    def forward(ctx, bits, candidates, weights, tau):
        index = chosen_indices(candidates, weights)
        ctx.save_for_backward(bits, candidates, weights if weights is not None else index, index)
        ctx.has_weights = weights is not None and candidates.shape[1] > 1
        ctx.tau = tau
        return torch.index_select(bits, 1, index)

    @staticmethod
    def backward(ctx, grad):
        bits, candidates, weights, index = ctx.saved_tensors
        grad_bits = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_bits = torch.zeros_like(bits)
            if ctx.has_weights:
                spread = torch.softmax(weights / ctx.tau, dim=1)  # [S, C]
                contrib = (grad[:, :, None] * spread[None]).reshape(grad.shape[0], candidates.numel())
                grad_bits.index_add_(1, candidates.reshape(-1), contrib)
            else:
                grad_bits.index_add_(1, index, grad)
        if ctx.has_weights and ctx.needs_input_grad[2]:
            grad_weights = torch.zeros_like(weights)
            for start in range(0, bits.shape[0], CHUNK):
                signed = 2.0 * bits[start : start + CHUNK][:, candidates] - 1.0  # [b, S, C]
                grad_weights += torch.einsum("bsc,bs->sc", signed, grad[start : start + CHUNK])
        return grad_bits, None, grad_weights, None


def select_bits(bits, candidates, weights=None, tau: float = 1.0):
    return SelectBits.apply(bits, candidates, weights, tau)

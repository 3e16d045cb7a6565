"""EFD gradients of the LUT layer and the learnable mapping against a direct evaluation of their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quweit.custom_ops.efd import BETA, efd_alpha, lut_layer
from quweit.custom_ops.learnable_mapping import select_bits


def direct_efd(slot_bits: np.ndarray, tables: np.ndarray, grad: np.ndarray):
    """The EFD formula written out with loops (../shared/FACTS.md), float64."""
    batch, rows, n = slot_bits.shape
    alpha = efd_alpha(n)
    grad_tables = np.zeros_like(tables, dtype=np.float64)
    grad_bits = np.zeros(slot_bits.shape)
    for b in range(batch):
        for r in range(rows):
            a = sum(int(slot_bits[b, r, l]) << l for l in range(n))
            grad_tables[r, a] += grad[b, r]
            for l in range(n):
                total = 0.0
                for k in range(1 << n):
                    sign = 1.0 if (k >> l) & 1 else -1.0
                    total += sign * tables[r, k] * BETA ** ((a ^ k) & ~(1 << l)).bit_count()
                grad_bits[b, r, l] = grad[b, r] * alpha * total
    return grad_bits, grad_tables


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_efd_gradients_match_formula(n):
    rng = np.random.default_rng(n)
    slot_bits = rng.integers(0, 2, size=(5, 3, n)).astype(np.float32)
    tables = rng.uniform(-1, 1, size=(3, 1 << n)).astype(np.float32)
    grad = rng.normal(size=(5, 3)).astype(np.float32)
    bits_t = torch.tensor(slot_bits, requires_grad=True)
    tables_t = torch.tensor(tables, requires_grad=True)
    out = lut_layer(bits_t, tables_t)
    address = (slot_bits.astype(np.int64) << np.arange(n)).sum(-1)
    assert np.array_equal(out.detach().numpy(), (tables[np.arange(3)[None], address] > 0).astype(np.float32))
    out.backward(torch.tensor(grad))
    want_bits, want_tables = direct_efd(slot_bits, tables, grad)
    np.testing.assert_allclose(bits_t.grad.numpy(), want_bits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tables_t.grad.numpy(), want_tables, rtol=1e-6, atol=1e-6)


def test_learnable_mapping_gradients_match_formula():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(6, 10)).astype(np.float32)
    candidates = rng.integers(0, 10, size=(4, 3))
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    grad = rng.normal(size=(6, 4)).astype(np.float32)
    bits_t = torch.tensor(bits, requires_grad=True)
    weights_t = torch.tensor(weights, requires_grad=True)
    out = select_bits(bits_t, torch.tensor(candidates), weights_t, 0.5)
    chosen = candidates[np.arange(4), weights.argmax(1)]
    assert np.array_equal(out.detach().numpy(), bits[:, chosen])
    out.backward(torch.tensor(grad))
    want_weights = np.einsum("bsc,bs->sc", 2 * bits[:, candidates] - 1, grad)
    soft = np.exp(weights / 0.5) / np.exp(weights / 0.5).sum(1, keepdims=True)
    want_bits = np.zeros_like(bits, dtype=np.float64)
    for s in range(4):
        for c in range(3):
            want_bits[:, candidates[s, c]] += soft[s, c] * grad[:, s]
    np.testing.assert_allclose(weights_t.grad.numpy(), want_weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bits_t.grad.numpy(), want_bits, rtol=1e-5, atol=1e-6)


def test_fixed_mapping_passes_gradient_to_the_bit_it_reads():
    bits = torch.zeros(2, 5, requires_grad=True)
    candidates = torch.tensor([[3], [3], [0]])
    select_bits(bits, candidates).backward(torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]))
    assert bits.grad.tolist() == [[4.0, 0, 0, 3.0, 0], [32.0, 0, 0, 24.0, 0]]

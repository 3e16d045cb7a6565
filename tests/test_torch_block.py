"""The torch shim against the numpy oracle: eval forward bit-exact, parameters round-trip, training deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blocks import LEADING_SHAPES, adversarial_inputs, blocks, same_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quweit.custom_ops import WeightlessBlockError, evaluate, random_params
from quweit.custom_ops.torch_block import WeightlessBlock


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=blocks(max_features=256), shape=LEADING_SHAPES, seed=st.integers(0, 2**32 - 1),
       candidates=st.sampled_from([1, 3]))
def test_eval_forward_equals_reference(params, shape, seed, candidates):
    x = adversarial_inputs(params, shape, seed)
    module = WeightlessBlock.from_params(params, candidates=candidates, seed=seed).eval()
    assert same_bits(module(torch.from_numpy(x)).numpy(), evaluate(params, x))
    assert module.to_params().equals(params)


@settings(max_examples=30, deadline=None)
@given(params=blocks(max_features=64), seed=st.integers(0, 2**32 - 1))
def test_training_forward_equals_eval_forward(params, seed):
    """Training mode computes the same function (its conditional sum is exact: float64, rounded once)."""
    x = adversarial_inputs(params, (7,), seed)
    module = WeightlessBlock.from_params(params)
    expected = evaluate(params, x)
    assert same_bits(module.train()(torch.from_numpy(x)).detach().numpy(), expected)


def _trained_params(seed: int, steps: int = 20):
    torch.manual_seed(seed)
    params = random_params(np.random.default_rng(1), in_features=12, out_features=3, thresholds_per_feature=4,
                           lut_inputs=4, layer_sizes=(16, 6))
    module = WeightlessBlock.from_params(params, candidates=4, seed=seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy((rng.normal(size=(64, 12)) * 20).astype(np.float32)).requires_grad_()
    target = torch.from_numpy(rng.normal(size=(64, 3)).astype(np.float32))
    for _ in range(steps):
        loss = ((module(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.clamp_tables_()
    return params, module, x.grad


def test_training_is_deterministic_and_moves_every_part():
    params, first, x_grad = _trained_params(seed=3)
    _, second, x_grad_again = _trained_params(seed=3)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(x_grad, x_grad_again) and x_grad.abs().sum() > 0
    exported = first.to_params()
    assert exported.equals(second.to_params())
    assert not np.array_equal(exported.tables, params.tables)
    assert not np.array_equal(exported.encoded_values, params.encoded_values)
    # the exported integers are exactly what the trained module computes
    x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32) * 20
    assert same_bits(first.eval()(torch.from_numpy(x)).numpy(), evaluate(exported, x))


def test_bad_input_names_the_node_and_parameter():
    params = random_params(np.random.default_rng(0), in_features=4, out_features=2, thresholds_per_feature=2,
                           lut_inputs=3).replace(node="mlp3")
    module = WeightlessBlock.from_params(params)
    with pytest.raises(WeightlessBlockError, match="node 'mlp3'.*'X'.*in_features=4"):
        module(torch.zeros(2, 5))
    with pytest.raises(WeightlessBlockError, match="'X'.*float32"):
        module(torch.zeros(2, 4, dtype=torch.float64))
    big = params.replace(encoded_values=np.full(2, 1 << 23, np.int32), bias=np.zeros(2, np.int32))
    with pytest.raises(WeightlessBlockError, match="encoded_values"):
        WeightlessBlock.from_params(big)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=blocks(max_features=128), seed=st.integers(0, 2**32 - 1), candidates=st.sampled_from([1, 4]))
def test_onnx_torch_onnx_keeps_every_parameter(params, seed, candidates):
    """A block model read into torch (the fine-tuning path) and written back is byte-identical, and the
    torch graph computes the oracle's bits."""
    from quweit.converter.onnx_torch import OnnxGraphModule, write_back
    from quweit.custom_ops import make_block_model

    model = make_block_model(params)
    graph = OnnxGraphModule(model, candidates=candidates, seed=seed).eval()
    assert write_back(model, graph.block_params()).SerializeToString() == model.SerializeToString()
    x = adversarial_inputs(params, (2, 3), seed)
    assert same_bits(graph(torch.from_numpy(x)).numpy(), evaluate(params, x))

"""The fused training ops (custom_ops/fused_training.py, runtime/src/train_block.cc) against the per-stage torch
path they replace: outputs bit for bit (and equal to the oracle), gradients up to float32 summation order,
results independent of the thread count, and the per-stage path used where the library is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blocks import LEADING_SHAPES, adversarial_inputs, blocks, same_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quweit.custom_ops import WeightlessBlockError, evaluate, fused_training, quantize_inputs, random_params
from quweit.custom_ops.reference import lut_layers, thermometer
from quweit.custom_ops.torch_block import WeightlessBlock

#: Gradients are the same float32 products summed in another order (value and bias gradients: float64 in
#: both paths, but torch reduces in its own order): a few ulps of the largest term.
RTOL, ATOL = 1e-5, 1e-6


def use_fused(monkeypatch, fused: bool) -> None:
    monkeypatch.setenv(fused_training.ENABLE_ENV, "1" if fused else "0")


def train_pass(params, x: np.ndarray, *, fused: bool, monkeypatch, input_grad: bool = True, frozen=(), seed=0,
               candidates: int = 1):
    """Output, gradients (`x`, then every parameter by name) and exported parameters of one forward/backward.

    With candidates > 1 the mapping weights are drawn at random, so slots read other candidates than the first."""
    use_fused(monkeypatch, fused)
    module = WeightlessBlock.from_params(params, candidates=candidates, seed=seed % 1000, tau=0.7).train()
    assert module.uses_fused_training == fused
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weights in module.mapping_weights:
            weights.copy_(torch.randn(weights.shape, generator=generator))
    for k in frozen:
        module.tables[k].requires_grad_(False)
        if candidates > 1:
            module.mapping_weights[k].requires_grad_(False)
    xt = torch.from_numpy(x).requires_grad_(input_grad)
    y = module(xt)
    upstream = torch.from_numpy(np.random.default_rng(seed).normal(size=y.shape).astype(np.float32))
    y.backward(upstream)
    grads = {"x": xt.grad, **{name: p.grad for name, p in module.named_parameters()}}
    return y.detach().numpy(), grads, module.to_params()  # the block it computed (chosen mapping): the oracle's


def assert_same_gradients(fused, staged):
    assert fused.keys() == staged.keys()
    for name, a in fused.items():
        b = staged[name]
        assert (a is None) == (b is None), name
        if a is not None:
            scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL * scale)


def test_the_fused_library_is_built():
    """`pip install .` builds it (the README's commands); without it every block trains on the slow path."""
    assert fused_training.enabled(), "libquweit_train.so is missing: reinstall with `pip install -e .`"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(params=blocks(max_features=64), shape=LEADING_SHAPES, seed=st.integers(0, 2**32 - 1),
       input_grad=st.booleans(), candidates=st.sampled_from([1, 1, 3]))
def test_fused_equals_per_stage_path(params, shape, seed, input_grad, candidates, monkeypatch):
    x = adversarial_inputs(params, shape, seed)
    options = dict(monkeypatch=monkeypatch, input_grad=input_grad, seed=seed, candidates=candidates)
    y_fused, g_fused, exported = train_pass(params, x, fused=True, **options)
    y_staged, g_staged, _ = train_pass(params, x, fused=False, **options)
    assert same_bits(y_fused, y_staged)
    assert same_bits(y_fused, evaluate(exported, x))
    assert_same_gradients(g_fused, g_staged)


def _larger_block():
    """Several token chunks (32), LUT blocks (64) and bias blocks (64) of the native passes; 3 layers of LUT6."""
    return random_params(np.random.default_rng(7), in_features=40, out_features=80, thresholds_per_feature=8,
                         lut_inputs=6, layer_sizes=(100, 130, 160))


def _larger_inputs(params, tokens: int = 300) -> np.ndarray:
    return (np.random.default_rng(8).normal(size=(tokens, params.in_features)) * 60 / params.input_scale).astype(np.float32)


@pytest.mark.parametrize("candidates", [1, 4])
@pytest.mark.parametrize("input_grad, frozen", [(True, ()), (False, ()), (False, (1, 2)), (True, (0, 1, 2))])
def test_fused_equals_per_stage_path_on_a_larger_block(monkeypatch, input_grad, frozen, candidates):
    """Frozen layers change which input gradients the backward must form (only those below a trained layer)."""
    params = _larger_block()
    x = _larger_inputs(params)
    options = dict(monkeypatch=monkeypatch, input_grad=input_grad, frozen=frozen, candidates=candidates)
    y_fused, g_fused, exported = train_pass(params, x, fused=True, **options)
    y_staged, g_staged, _ = train_pass(params, x, fused=False, **options)
    assert same_bits(y_fused, y_staged) and same_bits(y_fused, evaluate(exported, x))
    assert_same_gradients(g_fused, g_staged)
    tables = [g_fused[f"tables.{k}"] for k in range(3)]
    assert [t is None for t in tables] == [k in frozen for k in range(3)]
    lowest = g_fused["x"] if input_grad else tables[min(set(range(3)) - set(frozen))]
    assert float(lowest.abs().sum()) > 0  # the gradient reaches the lowest trained part


def test_buffers_of_any_memory_layout(monkeypatch):
    """Fitted thresholds often come Fortran-ordered (the module's buffer is then a strided view)."""
    params = _larger_block()
    fortran = params.replace(thresholds=np.asfortranarray(params.thresholds))
    assert not WeightlessBlock.from_params(fortran).thresholds.is_contiguous()
    x = _larger_inputs(params)
    y, grads, _ = train_pass(fortran, x, fused=True, monkeypatch=monkeypatch)
    y_staged, grads_staged, _ = train_pass(params, x, fused=False, monkeypatch=monkeypatch)
    assert same_bits(y, y_staged) and same_bits(y, evaluate(params, x))
    assert_same_gradients(grads, grads_staged)


@pytest.mark.parametrize("candidates", [1, 4])
def test_results_do_not_depend_on_the_thread_count(monkeypatch, candidates):
    """Every output element is summed by one thread in a fixed order: 1 and 2 threads give the same bits."""
    params, x = _larger_block(), _larger_inputs(_larger_block())
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            runs.append(train_pass(params, x, fused=True, monkeypatch=monkeypatch, candidates=candidates)[:2])
    finally:
        torch.set_num_threads(threads)
    (y0, g0), *others = runs
    for y, g in others:
        assert same_bits(y, y0)
        assert all(torch.equal(g[name], g0[name]) for name in g0)


def test_training_forward_is_exact_beyond_float32_sums(monkeypatch):
    """Encoded values near the trainable limit: partial sums pass 2^24, where float32 sums round; both
    training paths still equal the op's integer semantics."""
    params = random_params(np.random.default_rng(3), in_features=6, out_features=4, thresholds_per_feature=4,
                           lut_inputs=3, layer_sizes=(32,))
    rng = np.random.default_rng(4)
    values = rng.integers((1 << 22) - 64, 1 << 22, size=32).astype(np.int32) | 1  # odd: sums need 26 bits
    params = params.replace(encoded_values=values, bias=np.full(4, 3, np.int32),
                            output_scale=np.ones(4, np.float32))
    x = _larger_inputs(params, 64)
    want = evaluate(params, x)
    assert same_bits(WeightlessBlock.from_params(params).eval()(torch.from_numpy(x)).numpy(), want)
    for fused in (True, False):
        y = train_pass(params, x, fused=fused, monkeypatch=monkeypatch)[0]
        assert same_bits(y, want)
    # The check has teeth: the float32 sum the per-stage path used before is not exact here.
    bits = lut_layers(params, thermometer(params, quantize_inputs(params, x))).astype(np.float32)
    float32_sum = (torch.from_numpy(bits).reshape(-1, 4, 8) * torch.from_numpy(values.astype(np.float32)).reshape(4, 8)).sum(-1) + 3
    assert not np.array_equal(float32_sum.numpy(), want)


def test_zero_tokens(monkeypatch):
    params = _larger_block()
    x = np.zeros((0, params.in_features), np.float32)
    y, grads, _ = train_pass(params, x, fused=True, monkeypatch=monkeypatch)
    assert y.shape == (0, params.out_features)
    assert all(float(g.abs().sum()) == 0 for g in grads.values())


def test_bad_mapping_names_the_parameter(monkeypatch):
    use_fused(monkeypatch, True)
    params = _larger_block().replace(node="mlp2")
    module = WeightlessBlock.from_params(params).train()
    module.candidates(1)[5, 0] = 10**6
    with pytest.raises(WeightlessBlockError, match=r"node 'mlp2'.*mapping of layer 1: entry 5 is 1000000, outside \[0, 100\)"):
        module(torch.from_numpy(_larger_inputs(params, 4)))


def test_bad_candidates_name_the_parameter(monkeypatch):
    use_fused(monkeypatch, True)
    module = WeightlessBlock.from_params(_larger_block(), candidates=3).train()
    module.candidates(2)[7, 2] = -1
    with pytest.raises(WeightlessBlockError, match=r"candidates of layer 2: entry 23 is -1, outside \[0, 130\)"):
        module(torch.from_numpy(_larger_inputs(_larger_block(), 4)))


def test_missing_library_falls_back_to_the_per_stage_path(monkeypatch, tmp_path):
    monkeypatch.delenv(fused_training.ENABLE_ENV, raising=False)
    monkeypatch.setenv("QUWEIT_TRAIN_LIBRARY", str(tmp_path / "missing.so"))
    fused_training._library.cache_clear()
    try:
        assert not fused_training.enabled()
        module = WeightlessBlock.from_params(_larger_block()).train()
        assert not module.uses_fused_training
        module(torch.from_numpy(_larger_inputs(_larger_block(), 8))).sum().backward()
        assert float(module.tables[0].grad.abs().sum()) > 0
    finally:
        monkeypatch.undo()
        fused_training._library.cache_clear()
    assert fused_training.enabled()

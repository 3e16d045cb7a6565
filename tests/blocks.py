"""Hypothesis strategies for random valid blocks and adversarial inputs, shared by every backend's tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from quweit.custom_ops import WeightlessBlockParams, random_params

SPECIAL_VALUES = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, 1e30, -1e30, 3.4e38, -3.4e38],
    dtype=np.float32,
)


@st.composite
def block_structures(draw, max_features: int = 1024, max_layers: int = 3, max_lut_inputs: int = 8):
    """Structure of a random block: sizes skewed small, with the full range reachable."""
    sizes = st.one_of(st.integers(1, 16), st.integers(1, max_features))
    in_features = draw(sizes)
    out_features = draw(sizes)
    group_size = draw(st.integers(1, 3 if out_features > 256 else 4))
    num_layers = draw(st.integers(1, max_layers))
    hidden = tuple(draw(st.integers(1, 96)) for _ in range(num_layers - 1))
    return dict(
        in_features=in_features,
        out_features=out_features,
        thresholds_per_feature=draw(st.one_of(st.integers(1, 4), st.integers(1, 32))),
        lut_inputs=draw(st.integers(1, max_lut_inputs)),
        layer_sizes=(*hidden, out_features * group_size),
        input_bits=draw(st.sampled_from([2, 4, 8, 8, 12, 16])),
    )


@st.composite
def blocks(draw, **limits) -> WeightlessBlockParams:
    structure = draw(block_structures(**limits))
    seed = draw(st.integers(0, 2**32 - 1))
    return random_params(np.random.default_rng(seed), **structure)


LEADING_SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.just(0), st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(1, 5)),
)


def adversarial_inputs(params: WeightlessBlockParams, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Float32 activations of `shape + (D_in,)` mixing in-range values, exact rounding ties
    (half-integers in quantized units), values beyond the quantization range, NaN, +-inf and denormals."""
    rng = np.random.default_rng(seed)
    full = (*shape, params.in_features)
    span = float(params.qmax + 1)
    units = rng.uniform(-1.5 * span, 1.5 * span, size=full)
    ties = np.floor(units) + 0.5
    quantized_units = np.where(rng.random(full) < 0.3, ties, units)
    x = (quantized_units / params.input_scale.astype(np.float64)).astype(np.float32)
    special = rng.random(full) < 0.1
    x[special] = rng.choice(SPECIAL_VALUES, size=int(special.sum()))
    return x


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact float32 equality (atol = 0; NaN payloads and signed zeros included)."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))

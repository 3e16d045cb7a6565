"""The onnxruntime C++ kernel equals the numpy oracle bit for bit (atol = 0), on every instruction-set
path this CPU has, on each of its evaluation paths (direct, byte-sliced, bit-sliced; forced with
QUWEIT_KERNEL_PATH, each at every token count from 1 to 130), with 1 and 2 intra-op threads; and it
rejects invalid parameters and inputs with an onnxruntime error naming the node, the parameter and the
value.

The models here carry no ONNX-function decomposition, so only the kernel can run them. Also run under
AddressSanitizer by test_kernel_asan.py (QUWEIT_ORT_LIBRARY points at the sanitized build).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

#: onnxruntime reports a kernel-creation status as RUNTIME_EXCEPTION ("Exception during initialization").
CREATION_ERRORS = (InvalidArgument, Fail, RuntimeException)

from blocks import LEADING_SHAPES, adversarial_inputs, blocks, same_bits
from quweit.custom_ops import default_config, evaluate, make_block_model, random_params
from quweit.runtime import make_session

#: Examples per property; test_kernel_asan.py lowers it for the (slower) sanitized run.
EXAMPLES = int(os.environ.get("QUWEIT_KERNEL_EXAMPLES", "300"))


def supported_isas() -> list[str]:
    flags = open("/proc/cpuinfo").read().split()
    isas = ["generic"]
    if "avx2" in flags:
        isas.append("avx2")
    if "avx512f" in flags and "avx512bw" in flags:
        isas.append("avx512")
    return isas


ISAS = supported_isas()


def kernel_only(params, leading=("batch", "sequence")) -> onnx.ModelProto:
    """A one-block model without the decomposition function: it runs only where the kernel is registered."""
    model = make_block_model(params, leading)
    del model.functions[:]
    return model


#: The kernel's evaluation paths (QUWEIT_KERNEL_PATH); None: chosen by token count.
PATHS = ("direct", "byteslice", "bitslice")


def run_kernel(model: onnx.ModelProto, x: np.ndarray, *, threads: int = 1, isa: str | None = None,
               path: str | None = None) -> np.ndarray:
    return kernel_session(model, threads=threads, isa=isa, path=path).run(None, {"X": x})[0]


def kernel_session(model: onnx.ModelProto, *, threads: int = 1, isa: str | None = None, path: str | None = None):
    with env_forced("QUWEIT_ISA", isa), env_forced("QUWEIT_KERNEL_PATH", path):
        return make_session(model, threads=threads)


class env_forced:
    """Set an environment variable read by the kernel at creation (QUWEIT_ISA, QUWEIT_KERNEL_PATH) for
    the duration of a block; None unsets it."""

    def __init__(self, name: str, value: str | None):
        self.name, self.value = name, value

    def __enter__(self):
        self.saved = os.environ.get(self.name)
        if self.value is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.value

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.saved


def isa_forced(isa: str | None) -> env_forced:
    return env_forced("QUWEIT_ISA", isa)


TOKEN_SHAPES = st.one_of(LEADING_SHAPES, st.tuples(st.integers(1, 2), st.integers(60, 700)))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=blocks(), shape=TOKEN_SHAPES, seed=st.integers(0, 2**31), threads=st.sampled_from([1, 2]),
       isa=st.sampled_from(ISAS), path=st.sampled_from((None, *PATHS)))
def test_kernel_equals_reference(params, shape, seed, threads, isa, path):
    x = adversarial_inputs(params, shape, seed)
    model = kernel_only(params, tuple(f"d{i}" for i in range(len(shape))))
    assert same_bits(run_kernel(model, x, threads=threads, isa=isa, path=path), evaluate(params, x))


def path_block(lut_inputs: int):
    """A block per LUT width for the path tests: 1, 2 or 3 layers; encoded values near the accumulator
    bound (so partial sums use all 32 bits); input_bits 2, 8 or 16 (int8 and int16 thermometers)."""
    layers = 1 + lut_inputs % 3
    out_features, group = 9 + lut_inputs, 1 + lut_inputs % 4
    hidden = tuple(23 + 7 * k for k in range(layers - 1))
    return random_params(np.random.default_rng(100 + lut_inputs), in_features=13 + 2 * lut_inputs,
                         out_features=out_features, thresholds_per_feature=1 + lut_inputs % 5,
                         lut_inputs=lut_inputs, layer_sizes=(*hidden, out_features * group),
                         input_bits=(8, 16, 2)[lut_inputs % 3], value_bits=30 - group)


TOKEN_COUNTS = range(1, 131)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lut_inputs", range(1, 9))
def test_each_path_at_every_token_count(path, lut_inputs):
    """Each path on its own (forced), on every ISA, at every token count from 1 to 130: direct tokens,
    byte-sliced tiles of 16 or 32 tokens, bit-sliced tiles of 64 to 512, their ragged ends included."""
    params = path_block(lut_inputs)
    x = adversarial_inputs(params, (TOKEN_COUNTS[-1],), seed=lut_inputs)
    want = evaluate(params, x)  # tokens are independent: the first m rows of the answer are the answer for m
    model = kernel_only(params, ("tokens",))
    for isa in ISAS:
        session = kernel_session(model, isa=isa, path=path)
        for count in TOKEN_COUNTS:
            assert same_bits(session.run(None, {"X": x[:count]})[0], want[:count]), (isa, count)


@pytest.mark.parametrize("path", (None, *PATHS))
@pytest.mark.parametrize("threads", [1, 2])
def test_one_wide_tile_shared_among_threads(path, threads):
    """A single tile of a block wide enough to share its LUTs among threads (hidden layer in ranges of
    64 LUTs, outputs in ranges of 16), from 1 to 40 tokens."""
    params = random_params(np.random.default_rng(5), in_features=70, out_features=200, thresholds_per_feature=5,
                           lut_inputs=6, layer_sizes=(1700, 200 * 9), value_bits=27)
    x = adversarial_inputs(params, (40,), seed=5)
    want = evaluate(params, x)
    for isa in ISAS:
        session = kernel_session(kernel_only(params, ("tokens",)), threads=threads, isa=isa, path=path)
        for count in (1, 2, 3, 16, 31, 32, 33, 40):
            assert same_bits(session.run(None, {"X": x[:count]})[0], want[:count]), (isa, count)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tokens", [1, 63, 64, 65, 128, 129, 1024, 2048 + 7])
def test_default_block_every_tile_width(isa, threads, tokens):
    """The converter's MiniLM-size block across tile widths (64..512 tokens) and ragged last tiles."""
    config = default_config(384, 384)
    params = random_params(np.random.default_rng(tokens), in_features=384, out_features=384,
                           thresholds_per_feature=config.thresholds_per_feature, lut_inputs=config.lut_inputs,
                           group_size=config.luts_per_output, input_bits=config.input_bits)
    x = adversarial_inputs(params, (1, tokens), seed=tokens)
    assert same_bits(run_kernel(kernel_only(params), x, threads=threads, isa=isa), evaluate(params, x))


@pytest.mark.parametrize("lut_inputs", range(1, 9))
def test_every_lut_width_with_several_layers(lut_inputs):
    params = random_params(np.random.default_rng(lut_inputs), in_features=11, out_features=5,
                           thresholds_per_feature=6, lut_inputs=lut_inputs, layer_sizes=(70, 33, 10))
    x = adversarial_inputs(params, (3, 150), seed=lut_inputs)
    for isa in ISAS:
        assert same_bits(run_kernel(kernel_only(params), x, isa=isa), evaluate(params, x)), isa


def test_empty_batch_and_rank_one_input():
    params = random_params(np.random.default_rng(1), in_features=4, out_features=3,
                           thresholds_per_feature=2, lut_inputs=3)
    empty = np.zeros((0, 5, 4), dtype=np.float32)
    assert run_kernel(kernel_only(params, ("a", "b")), empty).shape == (0, 5, 3)
    single = adversarial_inputs(params, (), seed=3)
    assert same_bits(run_kernel(kernel_only(params, ()), single), evaluate(params, single))


# ----- invalid parameters: rejected at session creation, by the kernel, naming node/parameter/value ------

def corrupt(params, name: str, value: np.ndarray) -> onnx.ModelProto:
    """The block's model with initializer `block.<name>` replaced (bypassing the Python validator)."""
    model = kernel_only(params)
    for i, init in enumerate(model.graph.initializer):
        if init.name == f"block.{name}":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
            return model
    raise AssertionError(f"no initializer block.{name}")


def base_params():
    return random_params(np.random.default_rng(7), in_features=6, out_features=4, thresholds_per_feature=3,
                         lut_inputs=4, layer_sizes=(9, 8))


def with_entry(array: np.ndarray, index, value) -> np.ndarray:
    changed = array.copy()
    changed[index] = value
    return changed


INVALID = {
    "mapping_out_of_range": lambda p: (corrupt(p, "mapping", with_entry(p.mapping, (2, 1), 18)),
                                       ["mapping", "layer 0 LUT 2 slot 1", "18", "[0, 18)"]),
    "mapping_second_layer": lambda p: (corrupt(p, "mapping", with_entry(p.mapping, (10, 0), 9)),
                                       ["mapping", "layer 1 LUT 1 slot 0", "bit 9", "[0, 9)"]),
    "mapping_negative": lambda p: (corrupt(p, "mapping", with_entry(p.mapping, (0, 0), -1)), ["mapping", "-1"]),
    "thresholds_unsorted": lambda p: (corrupt(p, "thresholds", np.array(p.thresholds[:, ::-1]) - np.arange(3, dtype=np.int32)),
                                      ["thresholds", "not non-decreasing"]),
    "threshold_range": lambda p: (corrupt(p, "thresholds", with_entry(p.thresholds, (1, 2), 300)),
                                  ["thresholds", "[1, 2] = 300", "[-128, 127]"]),
    "table_high_bits": lambda p: (corrupt(p, "tables", with_entry(p.tables, (4, 0), np.uint64(1 << 40))),
                                  ["tables", "row 4", "0x10000000000"]),
    "input_scale_zero": lambda p: (corrupt(p, "input_scale", with_entry(p.input_scale, 5, 0.0)),
                                   ["input_scale", "entry 5 is 0"]),
    "input_scale_nan": lambda p: (corrupt(p, "input_scale", with_entry(p.input_scale, 0, np.nan)),
                                  ["input_scale", "entry 0 is nan"]),
    "output_scale_inf": lambda p: (corrupt(p, "output_scale", with_entry(p.output_scale, 3, np.inf)),
                                   ["output_scale", "entry 3 is inf"]),
    "accumulator_bound": lambda p: (corrupt(p, "encoded_values", with_entry(p.encoded_values, 2, 2**31 - 1)),
                                    ["encoded_values", "output 1", "exceeds 2^31 - 1"]),
    "mapping_shape": lambda p: (corrupt(p, "mapping", p.mapping[:, :3].copy()), ["mapping", "[17, 4]", "[17, 3]"]),
    "tables_rank": lambda p: (corrupt(p, "tables", p.tables.reshape(-1).copy()), ["tables", "rank 2"]),
    "bias_shape": lambda p: (corrupt(p, "bias", p.bias[:3].copy()), ["output_scale", "shape must be [3], got [4]"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_parameters_fail_session_creation(case):
    model, expected = INVALID[case](base_params())
    with pytest.raises(CREATION_ERRORS) as error:
        make_session(model)
    message = str(error.value)
    for text in ["WeightlessBlock node 'block'", *expected]:
        assert text in message, (text, message)


def set_attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))
    return model


@pytest.mark.parametrize("name, value, expected", [
    ("lut_inputs", 9, "value 9 is outside [1, 8]"),
    ("lut_inputs", None, "attribute is missing"),
    ("input_bits", 1, "value 1 is outside [2, 16]"),
    ("input_bits", None, "attribute is missing"),  # required by the spec: no silent default of 8
    ("layer_sizes", None, "attribute is missing"),
    ("layer_sizes", [9, 0], "entry 1 must be an int >= 1, got 0"),
    ("in_features", 7, "attribute is 7 but the parameters give 6"),
    ("thresholds_per_feature", None, "attribute is missing"),
])
def test_invalid_attributes_fail_session_creation(name, value, expected):
    model = set_attribute(kernel_only(base_params()), name, value)
    with pytest.raises(CREATION_ERRORS) as error:
        make_session(model)
    assert "WeightlessBlock node 'block'" in str(error.value) and f"'{name}'" in str(error.value)
    assert expected in str(error.value)


def test_parameter_that_is_not_constant_is_rejected():
    model = kernel_only(base_params())
    init = next(i for i in model.graph.initializer if i.name == "block.bias")
    model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.INT32, [4]))
    model.graph.initializer.remove(init)
    with pytest.raises(CREATION_ERRORS, match="parameter 'bias': input is not a constant initializer"):
        make_session(model)


def test_wrong_parameter_dtype_is_rejected_by_the_op_signature():
    params = base_params()
    model = corrupt(params, "thresholds", params.thresholds.astype(np.int64))
    with pytest.raises(Exception, match=r"(?s)thresholds|Input2|tensor\(int64\)") as error:
        make_session(model)
    assert "block" in str(error.value)


def test_input_with_wrong_last_axis_fails_the_run():
    model = kernel_only(base_params(), ("tokens",))
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_param = "features"  # let onnxruntime pass it
    session = make_session(model)
    with pytest.raises(InvalidArgument, match=r"node 'block': parameter 'X': last axis must be in_features=6, got shape \[2, 5\]"):
        session.run(None, {"X": np.zeros((2, 5), dtype=np.float32)})


def test_input_with_wrong_dtype_fails_the_run():
    session = make_session(kernel_only(base_params()))
    with pytest.raises(Exception, match="tensor\\(double\\)"):
        session.run(None, {"X": np.zeros((2, 6), dtype=np.float64)})


def test_unknown_isa_request_is_an_error_not_a_fallback():
    with isa_forced("avx9000"), pytest.raises(CREATION_ERRORS, match="QUWEIT_ISA.*avx9000"):
        make_session(kernel_only(base_params()))


def test_unknown_path_request_is_an_error_not_a_fallback():
    with env_forced("QUWEIT_KERNEL_PATH", "sideways"), pytest.raises(CREATION_ERRORS, match="QUWEIT_KERNEL_PATH.*sideways"):
        make_session(kernel_only(base_params()))


FLUSHING_SESSION_CHILD = """
import numpy as np, onnxruntime as ort, sys
sys.path.insert(0, sys.argv[1])
from blocks import adversarial_inputs, same_bits
from test_kernel import base_params, kernel_only
from quweit.custom_ops import evaluate
from quweit.runtime import make_session

params = base_params().replace(output_scale=np.full(4, 3e-41, dtype=np.float32))  # outputs are denormals
x = adversarial_inputs(params, (2, 300), seed=5)
expected = evaluate(params, x)  # before any session sets FTZ/DAZ on this thread
assert np.any((expected != 0) & (np.abs(expected) < np.finfo(np.float32).tiny)), "no denormal outputs"
for threads in (1, 2):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.intra_op_num_threads = threads
    got = make_session(kernel_only(params), options=options).run(None, {"X": x})[0]
    assert same_bits(got, expected), f"threads={threads}: differs under denormals-as-zero"
print("exact")
"""


def test_exact_even_when_the_session_flushes_denormals():
    """A session with denormals-as-zero (onnxruntime sets FTZ/DAZ on its threads, the caller's included)
    must not change the op's results. In a child process: the flag would leak into this one's numpy."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    result = subprocess.run([sys.executable, "-c", FLUSHING_SESSION_CHILD, tests], capture_output=True, text=True,
                            cwd=tests, timeout=300)
    assert result.returncode == 0 and "exact" in result.stdout, result.stdout + result.stderr[-3000:]

"""Invalid parameters raise one typed error that names the parameter and the bad value."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from quweit.custom_ops import (
    WeightlessBlockError,
    WeightlessBlockParams,
    evaluate,
    make_block_model,
    random_params,
    read_blocks,
)


@pytest.fixture
def good() -> WeightlessBlockParams:
    return random_params(np.random.default_rng(7), in_features=4, out_features=3,
                         thresholds_per_feature=5, lut_inputs=4, layer_sizes=(7, 6))


def _with(params, **changes):
    fields = {name: getattr(params, name) for name in (
        "lut_inputs", "layer_sizes", "input_bits", "input_scale", "thresholds", "mapping", "tables",
        "encoded_values", "bias", "output_scale")}
    fields.update(changes)
    return WeightlessBlockParams(**fields)


def _expect(message: str):
    return pytest.raises(WeightlessBlockError, match=re.escape(message))


def test_mapping_index_out_of_range(good):
    mapping = good.mapping.copy()
    mapping[9, 2] = 7  # layer 1 reads the 7 bits of layer 0: index 7 is one past the end
    with _expect("parameter 'mapping': layer 1 LUT 2 slot 2 reads bit 7, outside [0, 7)"):
        _with(good, mapping=mapping)
    mapping[9, 2] = -1
    with _expect("parameter 'mapping': layer 1 LUT 2 slot 2 reads bit -1, outside [0, 7)"):
        _with(good, mapping=mapping)


def test_unsorted_thresholds(good):
    thresholds = good.thresholds.copy()
    thresholds[2] = [5, 9, 8, 10, 11]
    with _expect("parameter 'thresholds': row 2 is not non-decreasing: entry 1 = 9 > entry 2 = 8"):
        _with(good, thresholds=thresholds)


def test_threshold_outside_input_range(good):
    thresholds = good.thresholds.copy()
    thresholds[0, -1] = 128
    with _expect("parameter 'thresholds': entry [0, 4] = 128 is outside [-128, 127] (input_bits=8)"):
        _with(good, thresholds=np.sort(thresholds, axis=1))


def test_wrong_table_width(good):
    with _expect("parameter 'tables': shape must be [13, 1], got [13, 2]"):
        _with(good, tables=np.zeros((13, 2), np.uint64))
    tables = good.tables.copy()
    tables[3, 0] |= np.uint64(1 << 16)  # n = 4 uses bits 0..15 of the INIT word
    with _expect("parameter 'tables': row 3 = "):
        _with(good, tables=tables)


def test_group_sizes_must_divide(good):
    with _expect("parameter 'layer_sizes': last layer size 7 is not a multiple of out_features 3"):
        _with(good, layer_sizes=(6, 7), mapping=np.zeros((13, 4), np.int32),
              encoded_values=np.zeros(7, np.int32))


@pytest.mark.parametrize("name, value, message", [
    ("thresholds", lambda p: p.thresholds.astype(np.int64), "parameter 'thresholds': dtype must be int32, got int64[4, 5]"),
    ("input_scale", lambda p: p.input_scale.astype(np.float64), "parameter 'input_scale': dtype must be float32, got float64[4]"),
    ("tables", lambda p: p.tables.astype(np.int64), "parameter 'tables': dtype must be uint64, got int64[13, 1]"),
    ("bias", lambda p: p.bias.tolist(), "parameter 'bias': must be a numpy array, got list"),
])
def test_wrong_dtypes(good, name, value, message):
    with _expect(message):
        _with(good, **{name: value(good)})


@pytest.mark.parametrize("field, value, message", [
    ("lut_inputs", -2, "parameter 'lut_inputs': value -2 is outside [1, 8]"),
    ("lut_inputs", 9, "parameter 'lut_inputs': value 9 is outside [1, 8]"),
    ("lut_inputs", 4.0, "parameter 'lut_inputs': must be an int, got 4.0"),
    ("input_bits", 1, "parameter 'input_bits': value 1 is outside [2, 16]"),
    ("layer_sizes", (7, 0), "parameter 'layer_sizes': entry 1 must be an int >= 1, got 0"),
    ("layer_sizes", (), "parameter 'layer_sizes': must be a non-empty list of ints, got ()"),
])
def test_bad_structure(good, field, value, message):
    with _expect(message):
        _with(good, **{field: value})


def test_scales_and_accumulator_bound(good):
    scale = good.input_scale.copy()
    scale[1] = 0.0
    with _expect("parameter 'input_scale': entry 1 is"):
        _with(good, input_scale=scale)
    scale[1] = 2.0**25
    with _expect("must be finite with 0 < s <= 2^24"):
        _with(good, input_scale=scale)
    out = good.output_scale.copy()
    out[2] = np.nan
    with _expect("parameter 'output_scale': entry 2 is"):
        _with(good, output_scale=out)
    values = good.encoded_values.copy()
    values[2:4] = 2**30
    with _expect("parameter 'encoded_values': output 1: |bias| + sum |encoded_values| = "):
        _with(good, encoded_values=values)


def test_errors_name_the_node_when_read_from_onnx(good):
    model = make_block_model(good)
    init = next(t for t in model.graph.initializer if t.name == "block.mapping")
    mapping = onnx.numpy_helper.to_array(init).copy()
    mapping[0, 0] = 999
    init.CopyFrom(onnx.numpy_helper.from_array(mapping, init.name))
    with _expect("WeightlessBlock node 'block': parameter 'mapping': layer 0 LUT 0 slot 0 reads bit 999"):
        read_blocks(model)


def test_attribute_mismatch_is_reported(good):
    model = make_block_model(good)
    attr = next(a for a in model.graph.node[0].attribute if a.name == "out_features")
    attr.i = 4
    with _expect("node 'block': parameter 'out_features': attribute is 4 but the parameters give 3"):
        read_blocks(model)


@pytest.mark.parametrize("name", ["input_bits", "lut_inputs", "layer_sizes", "in_features", "out_features",
                                  "thresholds_per_feature"])
def test_required_attribute_missing_is_named(good, name):
    """No silent default (input_bits used to become 8): the spec requires every structure attribute."""
    model = make_block_model(good)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    with _expect(f"node 'block': parameter '{name}': attribute is missing"):
        read_blocks(model)


@pytest.mark.parametrize("versions", [[2], [0], [], [1, 1]])
def test_other_op_versions_are_refused(good, versions):
    """A future (or missing) version of domain quweit may mean other semantics: never read as v1."""
    model = make_block_model(good)
    kept = [e for e in model.opset_import if e.domain != "quweit"]
    del model.opset_import[:]
    model.opset_import.extend(kept + [onnx.helper.make_opsetid("quweit", v) for v in versions])
    with _expect("parameter 'opset_import': the model imports domain 'quweit' at"):
        read_blocks(model)


def test_onnx_round_trip_keeps_every_parameter(good):
    (again,) = read_blocks(make_block_model(good))
    assert again.equals(good)


def test_input_checks(good):
    with _expect("parameter 'X': must be a float32 array, got float64"):
        evaluate(good, np.zeros((2, 4)))
    with _expect("parameter 'X': last axis must be in_features=4, got shape [2, 5]"):
        evaluate(good, np.zeros((2, 5), np.float32))

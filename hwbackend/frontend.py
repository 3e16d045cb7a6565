"""`quweit::WeightlessBlock` in TVM's Relax ONNX frontend, registered without editing TVM's files.

TVM 0.27's importer has no custom-converter argument; it reads `onnx_frontend._get_convert_map()` on
every call, so `register_onnx_converter()` wraps that function once (idempotent) and
`unregister_onnx_converter()` restores it. The map is keyed by op_type only.

The same registration also corrects TVM 0.27's `ConstantOfShape` for a one-element `value` tensor
(the usual encoding, e.g. in every legacy-exporter transformer): TVM broadcasts the 1-D value to the
requested shape and fails when that shape is 0-d. Passing the value as a scalar is what the ONNX
spec means; without it no token-input transformer of tests/models.py imports into TVM.
"""

from __future__ import annotations

import contextlib

from quweit.custom_ops import OP_TYPE, PARAM_NAMES, WeightlessBlockError, WeightlessBlockParams

from .lowering import emit_block


def _converter_class():
    from tvm.ir.expr import Constant
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    class WeightlessBlock(OnnxOpConverter):
        """ONNX `quweit::WeightlessBlock` v1 -> the native TE lowering (see lowering.py)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            node = attr.get("tvm_custom", {}).get("name") or OP_TYPE
            if len(inputs) != 1 + len(PARAM_NAMES):
                raise WeightlessBlockError("inputs", f"expected {1 + len(PARAM_NAMES)}, got {len(inputs)}", node=node)
            arrays = {}
            for name, value in zip(PARAM_NAMES, inputs[1:]):
                if not isinstance(value, Constant):
                    raise WeightlessBlockError(
                        name, "must be an initializer (import with keep_params_in_input=False)", node=node
                    )
                arrays[name] = value.value.numpy()
            block = WeightlessBlockParams.from_attributes(attr, arrays, node=node)
            return emit_block(bb, inputs[0], block)

    return WeightlessBlock


def _constant_of_shape_class():
    from onnx import numpy_helper
    from tvm.relax.frontend.onnx.onnx_frontend import ConstantOfShape

    class ScalarValueConstantOfShape(ConstantOfShape):
        """TVM's converter, given the one-element `value` as a 0-d tensor (see the module docstring)."""

        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            if attr.get("value") is not None:
                value = numpy_helper.to_array(attr["value"])
                if value.size == 1:
                    attr = {**attr, "value": numpy_helper.from_array(value.reshape(()))}
            return super()._impl_v9(bb, inputs, attr, params)

    return ScalarValueConstantOfShape


def _frontend():
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend


def register_onnx_converter() -> None:
    """Make TVM's ONNX importer convert `WeightlessBlock` nodes; calling it again changes nothing."""
    frontend = _frontend()
    if getattr(frontend._get_convert_map, "_quweit", False):
        return
    original = frontend._get_convert_map
    converter, constant_of_shape = _converter_class(), _constant_of_shape_class()

    def convert_map_with_quweit():
        table = original()
        table[OP_TYPE] = converter
        table["ConstantOfShape"] = constant_of_shape
        return table

    convert_map_with_quweit._quweit = True
    convert_map_with_quweit.__wrapped__ = original
    frontend._get_convert_map = convert_map_with_quweit


def unregister_onnx_converter() -> None:
    """Undo `register_onnx_converter` (no-op when not registered)."""
    frontend = _frontend()
    if getattr(frontend._get_convert_map, "_quweit", False):
        frontend._get_convert_map = frontend._get_convert_map.__wrapped__


def is_registered() -> bool:
    return bool(getattr(_frontend()._get_convert_map, "_quweit", False))


@contextlib.contextmanager
def onnx_converter():
    """Register the converter for the duration of a `with` block, restoring the previous state after."""
    was = is_registered()
    register_onnx_converter()
    try:
        yield
    finally:
        if not was:
            unregister_onnx_converter()


def from_onnx(model, shape_dict: dict | None = None):
    """Import an ONNX model holding `WeightlessBlock` nodes into a Relax IRModule (parameters as constants)."""
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    register_onnx_converter()
    return tvm_from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)


__all__ = ["from_onnx", "is_registered", "onnx_converter", "register_onnx_converter", "unregister_onnx_converter"]

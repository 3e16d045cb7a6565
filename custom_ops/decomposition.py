"""The ONNX-function decomposition of `WeightlessBlock` into standard ops (opset >= 18).

Attached to every model that uses the op, it lets stock onnxruntime (or any ONNX runtime) run a
converted model with no quweit library. It is slow by design (it gathers bits as int64 tensors); the
C++ kernel is the fast path. It is written in ONNX text form so it reads like the specification:
one `Loop` over the layers makes a single function body serve blocks of any depth, since a model-local
function cannot be specialised per node.
"""

from __future__ import annotations

import onnx
import onnx.parser

from .params import DOMAIN, OP_TYPE, OP_VERSION

MIN_OPSET = 18

_FUNCTION_TEXT = """
<
  domain: "%(domain)s",
  opset_import: ["" : %(opset)d]
>
%(op_type)s <in_features, out_features, thresholds_per_feature, lut_inputs, layer_sizes, input_bits>
(X, input_scale, thresholds, mapping, tables, encoded_values, bias, output_scale) => (Y)
{
  # --- 3.1 input quantization: NaN -> 0, round half to even, saturate to [qmin, qmax]
  zero_f = Constant <value = float {0.0}> ()
  one_f = Constant <value = float {1.0}> ()
  two_f = Constant <value = float {2.0}> ()
  x_is_nan = IsNaN (X)
  x_clean = Where (x_is_nan, zero_f, X)
  scaled = Mul (x_clean, input_scale)
  rounded = Round (scaled)
  bits_attr = Constant <value_int: int = @input_bits> ()
  bits_f = Cast <to = 1> (bits_attr)
  sign_bits = Sub (bits_f, one_f)
  half_range = Pow (two_f, sign_bits)
  qmax = Sub (half_range, one_f)
  qmin = Neg (half_range)
  clipped = Clip (rounded, qmin, qmax)
  q = Cast <to = 6> (clipped)

  # --- 3.2 thermometer: bit i*T + t = q_i > thresholds[i, t]
  minus_one = Constant <value = int64[1] {-1}> ()
  zero_1 = Constant <value = int64[1] {0}> ()
  q_col = Unsqueeze (q, minus_one)
  therm = Greater (q_col, thresholds)
  therm_i = Cast <to = 7> (therm)
  lead = Shape <end = -1> (X)
  n_bits = Size (thresholds)
  n_bits_1 = Unsqueeze (n_bits, zero_1)
  therm_shape = Concat <axis = 0> (lead, n_bits_1)
  bits0 = Reshape <allowzero = 1> (therm_i, therm_shape)

  # --- table bits: bit a of row r at flat index r * 64W + a
  shifts = Constant <value = uint64[64] {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63}> ()
  one_u = Constant <value = uint64 {1}> ()
  tables_col = Unsqueeze (tables, minus_one)
  shifted = BitShift <direction = "RIGHT"> (tables_col, shifts)
  table_bit_u = BitwiseAnd (shifted, one_u)
  table_bit = Cast <to = 7> (table_bit_u)
  table_flat = Reshape (table_bit, minus_one)
  table_shape = Shape (table_bit)
  one_i = Constant <value = int64 {1}> ()
  words = Gather <axis = 0> (table_shape, one_i)
  sixty_four = Constant <value = int64 {64}> ()
  row_stride = Mul (words, sixty_four)

  # --- address weights 2^l, LSB first from slot 0
  n_attr = Constant <value_int: int = @lut_inputs> ()
  zero_i = Constant <value = int64 {0}> ()
  slots = Range (zero_i, n_attr, one_i)
  slots_f = Cast <to = 1> (slots)
  weights_f = Pow (two_f, slots_f)
  weights = Cast <to = 7> (weights_f)

  # --- 3.3 LUT layers, one Loop iteration per layer
  sizes = Constant <value_ints: ints = @layer_sizes> ()
  ends = CumSum (sizes, zero_i)
  starts = Sub (ends, sizes)
  n_layers = Size (sizes)
  last_bits = Loop (n_layers, , bits0) <body = layer_body (int64 k, bool cond_in, int64 bits_in) => (bool cond_out, int64 bits_out) {
    cond_out = Identity (cond_in)
    k_1 = Unsqueeze (k, zero_1)
    start_1 = Gather (starts, k_1)
    end_1 = Gather (ends, k_1)
    start = Squeeze (start_1, zero_1)
    end = Squeeze (end_1, zero_1)
    layer_mapping = Slice (mapping, start_1, end_1, zero_1)
    picked = Gather <axis = -1> (bits_in, layer_mapping)
    weighted = Mul (picked, weights)
    address = ReduceSum <keepdims = 0> (weighted, minus_one)
    rows = Range (start, end, one_i)
    row_base = Mul (rows, row_stride)
    flat_index = Add (address, row_base)
    bits_out = Gather <axis = 0> (table_flat, flat_index)
  }>

  # --- 3.4 conditional summation: acc_o = bias_o + sum of the group's encoded values whose bit is 1
  out_dim = Shape (bias)
  group_shape = Concat <axis = 0> (out_dim, minus_one)
  values = Reshape (encoded_values, group_shape)
  values_i = Cast <to = 7> (values)
  values_shape = Shape (values)
  grouped_shape = Concat <axis = 0> (lead, values_shape)
  grouped = Reshape <allowzero = 1> (last_bits, grouped_shape)
  selected = Mul (grouped, values_i)
  sums = ReduceSum <keepdims = 0> (selected, minus_one)
  bias_i = Cast <to = 7> (bias)
  acc64 = Add (sums, bias_i)
  acc = Cast <to = 6> (acc64)

  # --- 3.5 output dequantization: int32 -> binary32 (nearest even), one multiplication
  acc_f = Cast <to = 1> (acc)
  Y = Mul (acc_f, output_scale)
}
"""


def make_function(opset: int = MIN_OPSET) -> onnx.FunctionProto:
    """The decomposition as a model-local function importing the default domain at `opset`.

    onnx's checker requires a function's opset to agree with its model's, so callers pass the
    model's own default-domain version (>= 18).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"the WeightlessBlock decomposition needs opset >= {MIN_OPSET}, got {opset}")
    text = _FUNCTION_TEXT % {"domain": DOMAIN, "op_type": OP_TYPE, "opset": opset}
    function = onnx.parser.parse_function(text)
    _unshape_loop_body(function)
    function.doc_string = f"{DOMAIN}::{OP_TYPE} v{OP_VERSION} decomposition (docs/weightless_block.md)"
    return function


def _unshape_loop_body(function: onnx.FunctionProto) -> None:
    """Leave the loop-carried bits with unknown shape: they change size from layer to layer.

    The text form declares `int64 bits_in`, which the parser reads as a scalar; clearing the shape
    keeps shape inference from assuming rank 0.
    """
    for node in function.node:
        if node.op_type != "Loop":
            continue
        body = node.attribute[0].g
        for value in (*body.input, *body.output):
            if value.name in ("bits_in", "bits_out"):
                value.type.tensor_type.ClearField("shape")

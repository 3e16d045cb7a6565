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
  # --- spec section 5 as far as standard ops can check it: every input is viewed at its specified
  #     shape (a Reshape fails on a wrong element count before anything is allocated). Sizes that
  #     allocate (Range) come from the inputs' own shapes, never from an attribute (shape inference
  #     would fold an attribute into a constant size), so no attribute value can make a run allocate
  #     more than a fixed multiple of (tokens x parameter sizes). Values are not checked (docs, section 5).
  minus_one = Constant <value = int64[1] {-1}> ()
  zero_1 = Constant <value = int64[1] {0}> ()
  d_in_0 = Constant <value_int: int = @in_features> ()
  t_0 = Constant <value_int: int = @thresholds_per_feature> ()
  d_out_0 = Constant <value_int: int = @out_features> ()
  n_0 = Constant <value_int: int = @lut_inputs> ()
  d_in_attr = Unsqueeze (d_in_0, zero_1)
  t_attr = Unsqueeze (t_0, zero_1)
  d_out_attr = Unsqueeze (d_out_0, zero_1)
  n_attr = Unsqueeze (n_0, zero_1)
  thr_shape = Concat <axis = 0> (d_in_attr, t_attr)
  thr = Reshape <allowzero = 1> (thresholds, thr_shape)
  features = Shape <start = 0, end = 1> (thr)
  scale = Reshape <allowzero = 1> (input_scale, features)
  lead = Shape <end = -1> (X)
  x_shape = Concat <axis = 0> (lead, features)
  x = Reshape <allowzero = 1> (X, x_shape)
  sizes = Constant <value_ints: ints = @layer_sizes> ()
  total = ReduceSum <keepdims = 1> (sizes)
  map_shape = Concat <axis = 0> (total, n_attr)
  map = Reshape <allowzero = 1> (mapping, map_shape)
  n_1 = Shape <start = 1, end = 2> (mapping)
  n = Squeeze (n_1, zero_1)
  bias_v = Reshape <allowzero = 1> (bias, d_out_attr)
  out_dim = Shape (bias_v)
  out_scale = Reshape <allowzero = 1> (output_scale, out_dim)

  # --- 3.1 input quantization: NaN -> 0, round half to even, saturate to [qmin, qmax]
  zero_f = Constant <value = float {0.0}> ()
  one_f = Constant <value = float {1.0}> ()
  two_f = Constant <value = float {2.0}> ()
  x_is_nan = IsNaN (x)
  x_clean = Where (x_is_nan, zero_f, x)
  scaled = Mul (x_clean, scale)
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
  q_col = Unsqueeze (q, minus_one)
  therm = Greater (q_col, thr)
  therm_i = Cast <to = 7> (therm)
  n_bits = Size (thr)
  n_bits_1 = Unsqueeze (n_bits, zero_1)
  therm_shape = Concat <axis = 0> (lead, n_bits_1)
  bits0 = Reshape <allowzero = 1> (therm_i, therm_shape)

  # --- tables viewed as [L, W] words, W = max(1, 2^n / 64); bit a of row r is word r*W + (a >> 6),
  #     bit a & 63 (section 4); n is capped so that 2^n stays finite (any n > 8 fails the Reshape)
  sixty_four_f = Constant <value = float {64.0}> ()
  n_cap = Constant <value = float {62.0}> ()
  n_f = Cast <to = 1> (n)
  n_f_capped = Min (n_f, n_cap)
  entries = Pow (two_f, n_f_capped)
  words_f = Div (entries, sixty_four_f)
  words_f1 = Max (words_f, one_f)
  words = Cast <to = 7> (words_f1)
  words_1 = Unsqueeze (words, zero_1)
  tab_shape = Concat <axis = 0> (total, words_1)
  tab = Reshape <allowzero = 1> (tables, tab_shape)
  tab_flat = Reshape (tab, minus_one)
  one_u = Constant <value = uint64 {1}> ()
  sixty_four = Constant <value = int64 {64}> ()

  # --- address weights 2^l, LSB first from slot 0
  zero_i = Constant <value = int64 {0}> ()
  one_i = Constant <value = int64 {1}> ()
  slots = Range (zero_i, n, one_i)
  slots_f = Cast <to = 1> (slots)
  weights_f = Pow (two_f, slots_f)
  weights = Cast <to = 7> (weights_f)

  # --- 3.3 LUT layers, one Loop iteration per layer (rows of layer k: its slice of the mapping)
  ends = CumSum (sizes, zero_i)
  starts = Sub (ends, sizes)
  n_layers = Size (sizes)
  last_bits = Loop (n_layers, , bits0) <body = layer_body (int64 k, bool cond_in, int64 bits_in) => (bool cond_out, int64 bits_out) {
    cond_out = Identity (cond_in)
    k_1 = Unsqueeze (k, zero_1)
    start_1 = Gather (starts, k_1)
    end_1 = Gather (ends, k_1)
    start = Squeeze (start_1, zero_1)
    layer_mapping = Slice (map, start_1, end_1, zero_1)
    picked = Gather <axis = -1> (bits_in, layer_mapping)
    weighted = Mul (picked, weights)
    address = ReduceSum <keepdims = 0> (weighted, minus_one)
    count_1 = Shape <start = 0, end = 1> (layer_mapping)
    count = Squeeze (count_1, zero_1)
    stop = Add (start, count)
    rows = Range (start, stop, one_i)
    row_base = Mul (rows, words)
    word_in_row = Div (address, sixty_four)
    word_index = Add (word_in_row, row_base)
    word = Gather <axis = 0> (tab_flat, word_index)
    bit_in_word = Mod (address, sixty_four)
    shift = Cast <to = 13> (bit_in_word)
    shifted = BitShift <direction = "RIGHT"> (word, shift)
    bit = BitwiseAnd (shifted, one_u)
    bits_out = Cast <to = 7> (bit)
  }>

  # --- 3.4 conditional summation: acc_o = bias_o + sum of the group's encoded values whose bit is 1
  group_shape = Concat <axis = 0> (out_dim, minus_one)
  values = Reshape (encoded_values, group_shape)
  values_i = Cast <to = 7> (values)
  values_shape = Shape (values)
  grouped_shape = Concat <axis = 0> (lead, values_shape)
  grouped = Reshape <allowzero = 1> (last_bits, grouped_shape)
  selected = Mul (grouped, values_i)
  sums = ReduceSum <keepdims = 0> (selected, minus_one)
  bias_i = Cast <to = 7> (bias_v)
  acc64 = Add (sums, bias_i)
  acc = Cast <to = 6> (acc64)

  # --- 3.5 output dequantization: int32 -> binary32 (nearest even), one multiplication
  acc_f = Cast <to = 1> (acc)
  Y = Mul (acc_f, out_scale)
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

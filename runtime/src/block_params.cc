// Validation of a WeightlessBlock node, once per kernel (spec section 5). Mirrors
// quweit/custom_ops/params.py check for check, with the same message shapes.
#include "block_params.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace quweit {
namespace {

constexpr int64_t kMaxFeatures = 65536;
constexpr int64_t kMaxThresholds = 255;
constexpr int64_t kAccLimit = 2147483647;  // 2^31 - 1
constexpr float kMaxInputScale = 16777216.0f;  // 2^24

const char* const kParamNames[7] = {"input_scale", "thresholds", "mapping", "tables",
                                    "encoded_values", "bias", "output_scale"};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

const char* dtype_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    default: return "unsupported dtype";
  }
}

std::string float_text(float value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.9g", static_cast<double>(value));
  return buffer;
}

std::string hex_text(uint64_t value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%#llx", static_cast<unsigned long long>(value));
  return buffer;
}

// One constant parameter input as a flat array plus its shape, after dtype and constness checks.
template <typename T>
struct ConstantInput {
  std::vector<int64_t> shape;
  std::vector<T> values;
};

class Reader {
 public:
  Reader(const Ort::ConstKernelInfo& info, std::string node) : info_(info), node_(std::move(node)) {}

  [[noreturn]] void fail(const std::string& parameter, const std::string& problem) const {
    throw BlockError(node_, parameter, problem);
  }

  bool has_int(const char* name, int64_t* value) const {
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info_, name, value);
    if (status == nullptr) return true;
    Ort::GetApi().ReleaseStatus(status);
    return false;
  }

  int64_t int_attr(const char* name, int64_t low, int64_t high) const {
    int64_t value = 0;
    if (!has_int(name, &value)) fail(name, "attribute is missing");
    check_range(name, value, low, high);
    return value;
  }

  void check_range(const char* name, int64_t value, int64_t low, int64_t high) const {
    if (value < low || value > high)
      fail(name, "value " + std::to_string(value) + " is outside [" + std::to_string(low) + ", " +
                     std::to_string(high) + "]");
  }

  std::vector<int64_t> ints_attr(const char* name) const {
    size_t size = 0;
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size);
    if (status != nullptr) {
      Ort::GetApi().ReleaseStatus(status);
      fail(name, "attribute is missing (expected a list of ints)");
    }
    std::vector<int64_t> values(size);
    if (size > 0) Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, values.data(), &size));
    return values;
  }

  template <typename T>
  ConstantInput<T> constant(size_t index, ONNXTensorElementDataType expected, size_t rank) const {
    const char* name = kParamNames[index - 1];
    int is_constant = 0;
    Ort::ConstValue value{nullptr};
    try {
      value = info_.GetTensorConstantInput(index, &is_constant);
    } catch (const Ort::Exception& error) {
      fail(name, std::string("cannot read the input: ") + error.what());
    }
    if (!is_constant || value == nullptr)
      fail(name, "input is not a constant initializer (parameters must be constant)");
    auto info = value.GetTensorTypeAndShapeInfo();
    ConstantInput<T> result;
    result.shape = info.GetShape();
    if (info.GetElementType() != expected)
      fail(name, std::string("dtype must be ") + dtype_name(expected) + ", got " + dtype_name(info.GetElementType()) +
                     shape_text(result.shape));
    if (result.shape.size() != rank)
      fail(name, "must have rank " + std::to_string(rank) + ", got shape " + shape_text(result.shape));
    const size_t count = info.GetElementCount();
    const T* data = value.GetTensorData<T>();
    result.values.assign(data, data + count);
    return result;
  }

  template <typename T>
  void expect_shape(const char* name, const ConstantInput<T>& input, const std::vector<int64_t>& shape) const {
    if (input.shape != shape)
      fail(name, "shape must be " + shape_text(shape) + ", got " + shape_text(input.shape));
  }

 private:
  const Ort::ConstKernelInfo& info_;
  std::string node_;
};

}  // namespace

BlockError::BlockError(const std::string& node, const std::string& parameter, const std::string& problem)
    : std::runtime_error("WeightlessBlock node '" + node + "': parameter '" + parameter + "': " + problem) {}

BlockParams read_block_params(const Ort::ConstKernelInfo& info) {
  BlockParams p;
  p.node = info.GetNodeName();
  Reader reader(info, p.node);

  const int64_t n = reader.int_attr("lut_inputs", 1, 8);
  const int64_t bits = reader.int_attr("input_bits", 2, 16);  // required (spec section 1): no default
  const std::vector<int64_t> sizes = reader.ints_attr("layer_sizes");
  if (sizes.empty()) reader.fail("layer_sizes", "must be a non-empty list of ints, got []");
  int64_t total = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (sizes[k] < 1 || sizes[k] > kAccLimit)
      reader.fail("layer_sizes", "entry " + std::to_string(k) + " must be an int >= 1, got " + std::to_string(sizes[k]));
    p.layer_offsets.push_back(static_cast<int32_t>(total));
    p.layer_sizes.push_back(static_cast<int32_t>(sizes[k]));
    total += sizes[k];
    if (total > kAccLimit) reader.fail("layer_sizes", "total LUT count " + std::to_string(total) + " exceeds 2^31 - 1");
  }
  const int64_t last = sizes.back();
  const int64_t words = n <= 6 ? 1 : (int64_t{1} << n) / 64;

  auto input_scale = reader.constant<float>(1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 1);
  auto thresholds = reader.constant<int32_t>(2, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 2);
  auto mapping = reader.constant<int32_t>(3, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 2);
  auto tables = reader.constant<uint64_t>(4, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, 2);
  auto values = reader.constant<int32_t>(5, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 1);
  auto bias = reader.constant<int32_t>(6, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 1);
  auto output_scale = reader.constant<float>(7, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 1);

  const int64_t d_in = thresholds.shape[0];
  const int64_t t_per = thresholds.shape[1];
  const int64_t d_out = bias.shape[0];
  reader.check_range("in_features", d_in, 1, kMaxFeatures);
  reader.check_range("out_features", d_out, 1, kMaxFeatures);
  reader.check_range("thresholds_per_feature", t_per, 1, kMaxThresholds);
  reader.expect_shape("input_scale", input_scale, {d_in});
  reader.expect_shape("mapping", mapping, {total, n});
  reader.expect_shape("tables", tables, {total, words});
  reader.expect_shape("encoded_values", values, {last});
  reader.expect_shape("output_scale", output_scale, {d_out});
  if (last % d_out != 0)
    reader.fail("layer_sizes", "last layer size " + std::to_string(last) + " is not a multiple of out_features " +
                                   std::to_string(d_out) + " (group sizes must divide)");
  const char* derived_names[3] = {"in_features", "out_features", "thresholds_per_feature"};
  const int64_t derived[3] = {d_in, d_out, t_per};
  for (int a = 0; a < 3; ++a) {  // required, like every attribute (spec section 1)
    int64_t stated = 0;
    if (!reader.has_int(derived_names[a], &stated)) reader.fail(derived_names[a], "attribute is missing");
    if (stated != derived[a])
      reader.fail(derived_names[a], "attribute is " + std::to_string(stated) + " but the parameters give " +
                                        std::to_string(derived[a]));
  }

  for (int64_t i = 0; i < d_in; ++i) {
    const float s = input_scale.values[i];
    if (!(std::isfinite(s) && s > 0.0f && s <= kMaxInputScale))
      reader.fail("input_scale", "entry " + std::to_string(i) + " is " + float_text(s) + "; must be finite with 0 < s <= 2^24");
  }
  const int64_t qmin = -(int64_t{1} << (bits - 1)), qmax = (int64_t{1} << (bits - 1)) - 1;
  for (int64_t i = 0; i < d_in; ++i) {
    for (int64_t t = 0; t < t_per; ++t) {
      const int64_t v = thresholds.values[i * t_per + t];
      if (v < qmin || v > qmax)
        reader.fail("thresholds", "entry [" + std::to_string(i) + ", " + std::to_string(t) + "] = " + std::to_string(v) +
                                      " is outside [" + std::to_string(qmin) + ", " + std::to_string(qmax) +
                                      "] (input_bits=" + std::to_string(bits) + ")");
    }
    for (int64_t t = 0; t + 1 < t_per; ++t) {
      const int32_t a = thresholds.values[i * t_per + t], b = thresholds.values[i * t_per + t + 1];
      if (a > b)
        reader.fail("thresholds", "row " + std::to_string(i) + " is not non-decreasing: entry " + std::to_string(t) + " = " +
                                      std::to_string(a) + " > entry " + std::to_string(t + 1) + " = " + std::to_string(b));
    }
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const int64_t limit = k == 0 ? d_in * t_per : sizes[k - 1];
    for (int64_t j = 0; j < sizes[k]; ++j) {
      for (int64_t slot = 0; slot < n; ++slot) {
        const int64_t v = mapping.values[(p.layer_offsets[k] + j) * n + slot];
        if (v < 0 || v >= limit)
          reader.fail("mapping", "layer " + std::to_string(k) + " LUT " + std::to_string(j) + " slot " + std::to_string(slot) +
                                     " reads bit " + std::to_string(v) + ", outside [0, " + std::to_string(limit) + ")");
      }
    }
  }
  if (n < 6) {
    for (int64_t r = 0; r < total; ++r) {
      if (tables.values[r] >> (1u << n))
        reader.fail("tables", "row " + std::to_string(r) + " = " + hex_text(tables.values[r]) + " has bits set above bit " +
                                  std::to_string((1 << n) - 1) + " (lut_inputs=" + std::to_string(n) + ")");
    }
  }
  const int64_t group = last / d_out;
  for (int64_t o = 0; o < d_out; ++o) {
    int64_t span = std::llabs(static_cast<long long>(bias.values[o]));
    for (int64_t g = 0; g < group; ++g) span += std::llabs(static_cast<long long>(values.values[o * group + g]));
    if (span > kAccLimit)
      reader.fail("encoded_values", "output " + std::to_string(o) + ": |bias| + sum |encoded_values| = " +
                                        std::to_string(span) + " exceeds 2^31 - 1");
  }
  for (int64_t o = 0; o < d_out; ++o) {
    if (!std::isfinite(output_scale.values[o]))
      reader.fail("output_scale", "entry " + std::to_string(o) + " is " + float_text(output_scale.values[o]) + "; must be finite");
  }

  p.in_features = static_cast<int32_t>(d_in);
  p.out_features = static_cast<int32_t>(d_out);
  p.thresholds_per_feature = static_cast<int32_t>(t_per);
  p.lut_inputs = static_cast<int32_t>(n);
  p.input_bits = static_cast<int32_t>(bits);
  p.input_scale = std::move(input_scale.values);
  p.output_scale = std::move(output_scale.values);
  p.thresholds.assign(thresholds.values.begin(), thresholds.values.end());  // in [qmin, qmax]: fits int16
  p.mapping = std::move(mapping.values);
  p.tables = std::move(tables.values);
  p.encoded_values = std::move(values.values);
  p.bias = std::move(bias.values);
  return p;
}

BlockPlan BlockParams::plan() const {
  BlockPlan plan{};
  plan.in_features = in_features;
  plan.out_features = out_features;
  plan.thresholds_per_feature = thresholds_per_feature;
  plan.lut_inputs = lut_inputs;
  plan.num_layers = static_cast<int32_t>(layer_sizes.size());
  plan.group_size = layer_sizes.back() / out_features;
  plan.words_per_table = lut_inputs <= 6 ? 1 : (1 << lut_inputs) / 64;
  int64_t widest = static_cast<int64_t>(in_features) * thresholds_per_feature;
  for (int32_t size : layer_sizes) widest = size > widest ? size : widest;
  plan.max_layer_bits = static_cast<int32_t>(widest);
  plan.qmin = static_cast<float>(-(1 << (input_bits - 1)));
  plan.qmax = static_cast<float>((1 << (input_bits - 1)) - 1);
  plan.layer_sizes = layer_sizes.data();
  plan.layer_offsets = layer_offsets.data();
  plan.input_scale = input_scale.data();
  plan.thresholds = thresholds.data();
  plan.mapping = mapping.data();
  plan.tables = tables.data();
  plan.encoded_values = encoded_values.data();
  plan.bias = bias.data();
  plan.output_scale = output_scale.data();
  return plan;
}

}  // namespace quweit

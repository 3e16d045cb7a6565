// The onnxruntime custom op `quweit::WeightlessBlock` v1 (CPU), on the Lite custom-op API.
// Kernel creation validates the node once (block_params.cc), derives the layouts of the faster paths
// (block_layouts.cc) and picks the widest instruction set the CPU has. Compute chooses one of three
// evaluations by token count (bench/crossover.py measures where each is fastest): direct (one token at
// a time, direct_eval_impl.h), byte-sliced (up to 32 tokens per vector, byteslice_eval_impl.h) and
// bit-sliced (64 to 512 tokens per bit plane, bitslice_eval_impl.h). Work goes to onnxruntime's own
// intra-op thread pool (KernelContext::ParallelFor): tiles of tokens, or - for a single tile of a wide
// block - ranges of LUTs and outputs, so the op never runs threads of its own.
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "block_layouts.h"
#include "block_params.h"
#include "block_plan.h"
#include "ort_api.h"
#include "onnxruntime_lite_custom_op.h"

namespace quweit {
namespace {

using Ort::Custom::Tensor;

// The instruction set to use: QUWEIT_ISA=generic|avx2|avx512 forces one (tests cover every path the
// machine has); otherwise the widest one this CPU supports.
const IsaKernels& select_isa(const std::string& node) {
  const char* forced = std::getenv("QUWEIT_ISA");
#if defined(__x86_64__)
  __builtin_cpu_init();  // idempotent; the CPU model must be read before the first query
  const bool has_avx2 = __builtin_cpu_supports("avx2");
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else  // other architectures: the portable evaluators only
  const bool has_avx2 = false, has_avx512 = false;
#endif
  if (forced && *forced) {
    const std::string want = forced;
    if (want == "generic") return generic_kernels();
#if defined(__x86_64__)
    if (want == "avx2" && has_avx2) return avx2_kernels();
    if (want == "avx512" && has_avx512) return avx512_kernels();
#endif
    throw BlockError(node, "QUWEIT_ISA", "'" + want + "' is unknown or not supported by this CPU (generic, avx2, avx512)");
  }
#if defined(__x86_64__)
  if (has_avx512) return avx512_kernels();
  if (has_avx2) return avx2_kernels();
#endif
  return generic_kernels();
}

// Largest token counts for which the direct path, then the byte-sliced path, are the fastest, by LUT
// width n (python bench/crossover.py -> bench/results/crossover.json: each path forced, n = 1..8, 1 to
// 512 tokens, 1 thread, AVX2). Byte shuffles cost about the same for every n while bit-sliced mux
// trees grow with 2^n, so the byte-sliced range grows with n; for n = 8 it was faster at every count.
constexpr int64_t kDirectMaxTokens[9] = {0, 4, 2, 3, 3, 2, 2, 2, 2};
constexpr int64_t kByteSliceMaxTokens[9] = {0, 4, 32, 32, 32, 32, 192, 384, INT64_MAX};

// A single tile (one decode token; up to 32 byte-sliced tokens) is shared among threads only when each
// task gets at least this many LUT evaluations, a few microseconds of work: about what handing a task
// to an awake pool thread costs. The 2-thread rows of bench/kernel.py at 1 and 16 tokens show whether
// it pays on a machine (with sleeping or busy pool threads the calling thread simply runs every task).
constexpr int64_t kMinLutsPerTask = 768;

// The evaluation path: QUWEIT_KERNEL_PATH=direct|byteslice|bitslice forces one for every token count
// (tests run each path at every count); otherwise the fastest for the call's token count.
enum class PathChoice { kByTokens, kDirect, kByteSlice, kBitSlice };

PathChoice select_path(const std::string& node) {
  const char* forced = std::getenv("QUWEIT_KERNEL_PATH");
  if (forced == nullptr || *forced == 0) return PathChoice::kByTokens;
  const std::string want = forced;
  if (want == "direct") return PathChoice::kDirect;
  if (want == "byteslice") return PathChoice::kByteSlice;
  if (want == "bitslice") return PathChoice::kBitSlice;
  throw BlockError(node, "QUWEIT_KERNEL_PATH", "'" + want + "' is unknown (direct, byteslice, bitslice)");
}

// Bit-sliced tile width in 64-token words: the widest of 1, 2, 4, 8 up to the ISA's native vector width
// that still leaves two tiles (so two threads share the work); one word for small inputs.
int tile_words(int64_t tokens, int max_words) {
  int words = max_words;
  while (words > 1 && tokens < 2 * 64 * words) words /= 2;
  return words;
}

// Per-thread scratch, grown on demand and kept between calls (no allocation in the steady state);
// nullptr when memory is exhausted (never throws: it runs on onnxruntime's pool threads).
void* thread_scratch(size_t bytes) {
  thread_local std::unique_ptr<unsigned char[]> buffer;
  thread_local size_t capacity = 0;
  if (capacity < bytes) {
    buffer.reset(new (std::nothrow) unsigned char[bytes]);
    capacity = buffer ? bytes : 0;
  }
  return buffer.get();
}

// The op's float steps (spec 3.1, 3.5) assume IEEE round-to-nearest without flush-to-zero or
// denormals-are-zero; a session may have set FTZ/DAZ on its threads, so each tile runs with them off.
#if defined(__x86_64__)
class ExactFloatMode {
 public:
  ExactFloatMode() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero | kRounding)); }
  ~ExactFloatMode() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040, kRounding = 0x6000;
  unsigned saved_;
};
#else  // elsewhere the session's float mode is used as is (onnxruntime sets flush-to-zero only on x86)
struct ExactFloatMode {};
#endif

struct TileJob {
  const BlockPlan* plan;
  TileFn tile;
  const float* x;
  float* y;
  int64_t tokens;
  int64_t tile_tokens;
  size_t scratch_bytes;
  std::atomic<bool> out_of_memory{false};
};

void run_tile(void* data, size_t index) {
  TileJob& job = *static_cast<TileJob*>(data);
  const int64_t begin = static_cast<int64_t>(index) * job.tile_tokens;
  const int64_t count = job.tokens - begin < job.tile_tokens ? job.tokens - begin : job.tile_tokens;
  void* scratch = thread_scratch(job.scratch_bytes);
  if (scratch == nullptr) {
    job.out_of_memory = true;
    return;
  }
  ExactFloatMode exact;
  job.tile(*job.plan, job.x, job.y, begin, count, scratch);
}

// One tile whose LUTs are shared among threads: the steps of a PathKernels over ranges.
struct SplitTileJob {
  const BlockPlan* plan;
  const PathKernels* path;
  float* y;
  int64_t tokens;
  void* shared;          // the calling thread's scratch: thermometer and layer bits
  int layer;             // hidden layer being evaluated (ranges of LUTs), or num_layers - 1 (outputs)
  int64_t items;         // LUTs of the hidden layer, or outputs
  int64_t per_task;      // items per task (LUTs: a multiple of 64; outputs: of 16)
  size_t scratch_bytes;
  std::atomic<bool> out_of_memory{false};
};

void run_split_task(void* data, size_t index) {
  SplitTileJob& job = *static_cast<SplitTileJob*>(data);
  const int64_t first = static_cast<int64_t>(index) * job.per_task;
  const int64_t last = job.items - first < job.per_task ? job.items : first + job.per_task;
  if (job.layer + 1 < job.plan->num_layers) {
    job.path->layer(*job.plan, job.layer, job.shared, first, last);
    return;
  }
  void* own = thread_scratch(job.scratch_bytes);  // the shared scratch when run by the calling thread:
  if (own == nullptr) {                            // outputs only stage there, after the bits
    job.out_of_memory = true;
    return;
  }
  ExactFloatMode exact;
  job.path->outputs(*job.plan, job.y, 0, job.tokens, first, last, job.shared, own);
}

// Tasks for `items` units of `luts_per_item` LUT evaluations each, at least kMinLutsPerTask per task
// and at most 16 tasks; items per task rounded up to a multiple of `align`.
int64_t items_per_task(int64_t items, int64_t luts_per_item, int64_t align) {
  const int64_t by_work = (kMinLutsPerTask + luts_per_item - 1) / luts_per_item;
  const int64_t by_count = (items + 15) / 16;
  int64_t per_task = by_work > by_count ? by_work : by_count;
  per_task = (per_task + align - 1) / align * align;
  return per_task < items ? per_task : items;
}

}  // namespace

struct WeightlessBlockKernel {
  WeightlessBlockKernel(const OrtApi* /*api*/, const OrtKernelInfo* info)
      : params_(read_block_params(Ort::ConstKernelInfo{info})),
        layouts_(derive_layouts(params_)),
        plan_(make_plan(params_, layouts_)),
        isa_(select_isa(params_.node)),
        path_(select_path(params_.node)) {}

  // The parameter inputs were read and validated at kernel creation; they are constants.
  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, const Tensor<float>&, const Tensor<int32_t>&,
                      const Tensor<int32_t>&, const Tensor<uint64_t>&, const Tensor<int32_t>&,
                      const Tensor<int32_t>&, const Tensor<float>&, Tensor<float>& y) {
    try {
      std::vector<int64_t> shape = x.Shape();
      if (shape.empty() || shape.back() != plan_.in_features) {
        std::string text = "[";
        for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
        throw BlockError(params_.node, "X",
                         "last axis must be in_features=" + std::to_string(plan_.in_features) + ", got shape " + text + "]");
      }
      int64_t tokens = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) tokens *= shape[i];
      shape.back() = plan_.out_features;
      float* out = y.Allocate(shape);
      if (tokens == 0) return Ort::Status{nullptr};
      const PathKernels* path = choose_path(tokens);
      if (path != nullptr) {
        evaluate_path(context, *path, x.Data(), out, tokens);
        return Ort::Status{nullptr};
      }
      const int words = tile_words(tokens, isa_.max_words);
      TileJob job;
      job.plan = &plan_;
      job.tile = isa_.tile[words == 1 ? 0 : words == 2 ? 1 : words == 4 ? 2 : 3];
      job.x = x.Data();
      job.y = out;
      job.tokens = tokens;
      job.tile_tokens = 64 * static_cast<int64_t>(words);
      job.scratch_bytes = tile_scratch_bytes(plan_, words);
      run_tiles(context, job);
      return Ort::Status{nullptr};
    } catch (const BlockError& error) {
      return Ort::Status(error.what(), ORT_INVALID_ARGUMENT);
    } catch (const std::bad_alloc&) {
      const size_t most = std::max({tile_scratch_bytes(plan_, 8), isa_.direct->scratch_bytes(plan_),
                                    isa_.byteslice->scratch_bytes(plan_)});
      return Ort::Status(("WeightlessBlock node '" + params_.node + "': out of memory for the tile scratch (" +
                          std::to_string(most) + " bytes per thread at most)").c_str(),
                         ORT_FAIL);
    } catch (const std::exception& error) {
      return Ort::Status(error.what(), ORT_FAIL);
    }
  }

 private:
  static void run_tiles(OrtKernelContext* context, TileJob& job) {
    const size_t tiles = static_cast<size_t>((job.tokens + job.tile_tokens - 1) / job.tile_tokens);
    if (tiles == 1) {
      run_tile(&job, 0);
    } else {
      Ort::KernelContext(context).ParallelFor(&run_tile, tiles, 0, &job);
    }
    if (job.out_of_memory) throw std::bad_alloc();
  }

  // The direct or byte-sliced path for this many tokens, or nullptr for the bit-sliced one.
  const PathKernels* choose_path(int64_t tokens) const {
    const bool direct_offered = plan_.direct_rows > 0;  // else its copies would not fit int32 offsets
    switch (path_) {
      case PathChoice::kDirect: return direct_offered ? isa_.direct : isa_.byteslice;
      case PathChoice::kByteSlice: return isa_.byteslice;
      case PathChoice::kBitSlice: return nullptr;
      case PathChoice::kByTokens: break;
    }
    const int n = plan_.lut_inputs;
    if (tokens <= kDirectMaxTokens[n] && direct_offered) return isa_.direct;
    if (tokens <= kByteSliceMaxTokens[n]) return isa_.byteslice;
    return nullptr;
  }

  // Several tiles: one task per tile. One tile: its hidden layers' LUTs and its outputs are shared
  // among threads when there are enough of them. Throws std::bad_alloc when out of memory.
  void evaluate_path(OrtKernelContext* context, const PathKernels& path, const float* x, float* y,
                     int64_t tokens) const {
    const size_t bytes = path.scratch_bytes(plan_);
    const int64_t g_size = plan_.group_size;
    const int last = plan_.num_layers - 1;
    if (tokens > path.tokens || plan_.layer_sizes[last] < 2 * kMinLutsPerTask) {
      TileJob job;
      job.plan = &plan_;
      job.tile = path.tile;
      job.x = x;
      job.y = y;
      job.tokens = tokens;
      job.tile_tokens = path.tokens;
      job.scratch_bytes = bytes;
      run_tiles(context, job);
      return;
    }
    void* shared = thread_scratch(bytes);
    if (shared == nullptr) throw std::bad_alloc();
    {
      ExactFloatMode exact;
      path.encode(plan_, x, 0, tokens, shared);
    }
    Ort::KernelContext kernel_context(context);
    SplitTileJob job;
    job.plan = &plan_;
    job.path = &path;
    job.y = y;
    job.tokens = tokens;
    job.shared = shared;
    job.scratch_bytes = bytes;
    for (int k = 0; k <= last; ++k) {
      job.layer = k;
      job.items = k < last ? plan_.layer_sizes[k] : plan_.out_features;
      job.per_task = k < last ? items_per_task(job.items, 1, 64) : items_per_task(job.items, g_size, 16);
      const size_t tasks = static_cast<size_t>((job.items + job.per_task - 1) / job.per_task);
      if (tasks == 1) {
        run_split_task(&job, 0);
      } else {
        kernel_context.ParallelFor(&run_split_task, tasks, 0, &job);
      }
    }
    if (job.out_of_memory) throw std::bad_alloc();
  }

  BlockParams params_;
  DerivedLayouts layouts_;
  BlockPlan plan_;
  const IsaKernels& isa_;
  PathChoice path_;
};

// The Lite op, with kernel creation reporting errors as statuses (CreateKernelV2) instead of letting a
// C++ exception cross into onnxruntime: a bad parameter fails session creation with its message.
struct WeightlessBlockOp : Ort::Custom::OrtLiteCustomStruct<WeightlessBlockKernel> {
  using Base = Ort::Custom::OrtLiteCustomStruct<WeightlessBlockKernel>;

  // Declared for op version 1 only. onnxruntime matches custom kernels by schema since-version, not by the
  // model's opset import, so this does not yet refuse a future version; v2 will need its own check.
  WeightlessBlockOp() : Base("WeightlessBlock", "CPUExecutionProvider", 1, 1) {
    OrtCustomOp::CreateKernel = nullptr;
    OrtCustomOp::CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                     void** kernel) -> OrtStatusPtr {
      try {
        auto created = std::make_unique<Base::Kernel>();
        Ort::ThrowOnError(api->KernelInfo_GetInputCount(info, &created->num_input_));
        Ort::ThrowOnError(api->KernelInfo_GetOutputCount(info, &created->num_output_));
        created->custom_op_ = std::make_unique<WeightlessBlockKernel>(api, info);
        created->ep_ = static_cast<const WeightlessBlockOp*>(op)->execution_provider_;
        *kernel = created.release();
        return nullptr;
      } catch (const BlockError& error) {
        return api->CreateStatus(ORT_INVALID_ARGUMENT, error.what());
      } catch (const std::exception& error) {
        return api->CreateStatus(ORT_FAIL, error.what());
      }
    };
  }
};

}  // namespace quweit

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    std::string text = std::string("quweit kernel needs onnxruntime >= 1.") + std::to_string(ORT_API_VERSION) +
                       " (API " + std::to_string(ORT_API_VERSION) + "), this is " + api_base->GetVersionString();
    return oldest ? oldest->CreateStatus(ORT_FAIL, text.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    // Intentionally never freed: sessions may outlive any scope here and the library stays loaded for
    // the life of the process, so the op and its domain live as long as the process.
    static quweit::WeightlessBlockOp* op = new quweit::WeightlessBlockOp();
    static OrtCustomOpDomain* domain = [] {
      OrtCustomOpDomain* created = nullptr;
      Ort::ThrowOnError(Ort::GetApi().CreateCustomOpDomain("quweit", &created));
      Ort::ThrowOnError(Ort::GetApi().CustomOpDomain_Add(created, op));
      return created;
    }();
    return api->AddCustomOpDomain(options, domain);
  } catch (const std::exception& error) {
    return api->CreateStatus(ORT_FAIL, error.what());
  }
}

// TensorRT plugin for the `fastood::SegmentLSEScore` ONNX node (the fused OOD head).
//
// Contract (shared with fastood/export/onnx_export.py, the node's writer):
//   inputs   0 features (B, D) float32 | float16 | bfloat16 — raw image features
//            1 bank     (N, D) same type — unit-norm label embeddings [ID (K) | negatives]
//   attrs    num_id (K), groups (G), temperature (τ), method ("neglabel" | "mcm"),
//            normalize (1 = L2-normalise the feature rows)
//   outputs  0 score (B,) float32 — neglabel: mean_g sigmoid(LSE_id − LSE_g) (the last
//              (N−K) mod G negatives dropped); mcm: exp(max_k c_k/τ − LSE_k(c_k/τ))
//            1 pred  (B,) int32   — first argmax over the K ID cosines
// The math runs in fastood::cuda::head_score (csrc/cuda/head.cu): row scale, fused
// segmented LSE (tensor cores for 16-bit inputs, IEEE fp32 otherwise), score epilogue —
// the same kernels `fastood._C.head_score_cuda` exposes to the GPU tests. The segmented LSE
// is segment_lse()'s path (csrc/cuda/cuda_path.h): in a FASTOOD_TRITON_AOT=ON build, on an
// sm_90 GPU with fp16/bf16 inputs and >= 1,024 rows, the Hopper Triton sequence compiled ahead
// of time; else the portable AOT Triton kernel; else the CUDA C++ kernel. getWorkspaceSize
// (head_workspace_bytes) reserves for whichever runs; FASTOOD_CUDA_PATH forces one.
//
// Interface: IPluginV3 with IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime and
// an IPluginCreatorV3One (TensorRT >= 10.0; IPluginV2* is deprecated there). Name
// "SegmentLSEScore", version "1", namespace "". The creator registers itself when the
// library is loaded (ctypes.CDLL(..., RTLD_GLOBAL), trtexec --staticPlugins); the exported
// `fastood_register_trt_plugin()` does the same explicitly and is idempotent.
//
// Not compiled or run in fastood's CI (no TensorRT there); see the README section.
#include <NvInferRuntime.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "cuda/fastood_cuda.cuh"

namespace fastood {
namespace trt {
namespace {

using namespace nvinfer1;
namespace fc = fastood::cuda;

constexpr char const* kPluginName = "SegmentLSEScore";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

void log_error(std::string const& msg) noexcept {
  // TensorRT gives V3 plugins no logger before attachToContext; stderr is what remains.
  std::fprintf(stderr, "[fastood SegmentLSEScore] %s\n", msg.c_str());
}

bool to_dtype(DataType t, fc::DType* out) {
  switch (t) {
    case DataType::kFLOAT: *out = fc::DType::kFloat32; return true;
    case DataType::kHALF: *out = fc::DType::kFloat16; return true;
    case DataType::kBF16: *out = fc::DType::kBFloat16; return true;
    default: return false;
  }
}

// Integer value of a plugin field, whatever integer/float type the parser chose.
bool field_int(PluginField const& f, int64_t* out) {
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kINT8: *out = *static_cast<int8_t const*>(f.data); return true;
    case PluginFieldType::kINT16: *out = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT32: *out = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: *out = *static_cast<int64_t const*>(f.data); return true;
    case PluginFieldType::kFLOAT32: *out = static_cast<int64_t>(*static_cast<float const*>(f.data)); return true;
    case PluginFieldType::kFLOAT64: *out = static_cast<int64_t>(*static_cast<double const*>(f.data)); return true;
    default: return false;
  }
}

bool field_float(PluginField const& f, double* out) {
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kFLOAT32: *out = *static_cast<float const*>(f.data); return true;
    case PluginFieldType::kFLOAT64: *out = *static_cast<double const*>(f.data); return true;
    default: {
      int64_t i = 0;
      if (!field_int(f, &i)) return false;
      *out = static_cast<double>(i);
      return true;
    }
  }
}

bool field_string(PluginField const& f, std::string* out) {
  if (f.type != PluginFieldType::kCHAR || f.data == nullptr || f.length < 0) return false;
  char const* c = static_cast<char const*>(f.data);
  size_t n = 0;  // the length may or may not count a terminating NUL
  while (n < static_cast<size_t>(f.length) && c[n] != '\0') ++n;
  out->assign(c, n);
  return true;
}

// Parse the node attributes / serialized fields into a HeadConfig; "" or the error.
std::string parse_fields(PluginFieldCollection const* fc_in, fc::HeadConfig* cfg) {
  if (fc_in == nullptr) return "no plugin fields";
  bool have_k = false, have_t = false, have_m = false;
  cfg->groups = 1;
  cfg->normalize = true;
  for (int32_t i = 0; i < fc_in->nbFields; ++i) {
    PluginField const& f = fc_in->fields[i];
    if (f.name == nullptr) continue;
    std::string const name(f.name);
    if (name == "num_id") {
      if (!field_int(f, &cfg->num_id)) return "num_id must be an integer";
      have_k = true;
    } else if (name == "groups") {
      if (!field_int(f, &cfg->groups)) return "groups must be an integer";
    } else if (name == "temperature") {
      double t = 0.0;
      if (!field_float(f, &t)) return "temperature must be a number";
      cfg->temperature = static_cast<float>(t);
      have_t = true;
    } else if (name == "normalize") {
      int64_t v = 1;
      if (!field_int(f, &v)) return "normalize must be 0 or 1";
      cfg->normalize = v != 0;
    } else if (name == "method") {
      std::string m;
      int64_t code = -1;
      if (field_string(f, &m)) {
        if (m == "neglabel") cfg->method = fc::HeadMethod::kNegLabel;
        else if (m == "mcm") cfg->method = fc::HeadMethod::kMcm;
        else return "method must be 'neglabel' or 'mcm', got '" + m + "'";
      } else if (field_int(f, &code) && (code == 0 || code == 1)) {
        cfg->method = static_cast<fc::HeadMethod>(code);
      } else {
        return "method must be the string 'neglabel' or 'mcm'";
      }
      have_m = true;
    }
    // Other fields (plugin_version, plugin_namespace, ...) are the parser's business.
  }
  if (!have_k) return "missing attribute num_id";
  if (!have_t) return "missing attribute temperature";
  if (!have_m) return "missing attribute method";
  if (cfg->method == fc::HeadMethod::kMcm) cfg->groups = 1;
  if (!(cfg->temperature > 0.0f) || !std::isfinite(cfg->temperature)) return "temperature must be positive and finite";
  if (cfg->num_id < 1) return "num_id must be >= 1";
  if (cfg->groups < 1) return "groups must be >= 1";
  return std::string();
}

class SegmentLseScorePlugin final : public IPluginV3,
                                    public IPluginV3OneCore,
                                    public IPluginV3OneBuild,
                                    public IPluginV3OneRuntime {
 public:
  explicit SegmentLseScorePlugin(fc::HeadConfig const& cfg) : mCfg(cfg) { buildFields(); }

  SegmentLseScorePlugin(SegmentLseScorePlugin const& other) : mCfg(other.mCfg), mSmCount(other.mSmCount) {
    buildFields();
  }
  SegmentLseScorePlugin& operator=(SegmentLseScorePlugin const&) = delete;
  ~SegmentLseScorePlugin() override = default;

  // ---- IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override {
    try {
      return new SegmentLseScorePlugin(*this);
    } catch (...) {
      return nullptr;
    }
  }

  // ---- IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // ---- IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 2; }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || outputTypes == nullptr || inputTypes == nullptr) return -1;
    outputTypes[0] = DataType::kFLOAT;
    outputTypes[1] = DataType::kINT32;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& /*exprBuilder*/) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || inputs == nullptr || outputs == nullptr) return -1;
    if (inputs[0].nbDims != 2 || inputs[1].nbDims != 2) {
      log_error("features and bank must be 2-D (B, D) and (N, D)");
      return -1;
    }
    for (int32_t o = 0; o < 2; ++o) {
      outputs[o].nbDims = 1;
      outputs[o].d[0] = inputs[0].d[0];  // B
    }
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (inOut == nullptr || nbInputs != 2 || nbOutputs != 2 || pos < 0 || pos >= 4) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    fc::DType unused;
    switch (pos) {
      case 0: return to_dtype(d.type, &unused);
      case 1: return d.type == inOut[0].desc.type;  // bank in the features' type
      case 2: return d.type == DataType::kFLOAT;
      default: return d.type == DataType::kINT32;
    }
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (in == nullptr || out == nullptr || nbInputs != 2 || nbOutputs != 2) return -1;
    Dims const& xd = in[0].desc.dims;
    Dims const& bd = in[1].desc.dims;
    if (xd.nbDims != 2 || bd.nbDims != 2) return -1;
    if (xd.d[1] >= 0 && bd.d[1] >= 0 && xd.d[1] != bd.d[1]) {
      log_error("features width D=" + std::to_string(xd.d[1]) + " but bank width D=" + std::to_string(bd.d[1]));
      return -1;
    }
    if (bd.d[0] >= 0) {
      std::string const why = fc::head_check(mCfg, bd.d[0]);
      if (!why.empty()) {
        log_error(why);
        return -1;
      }
    }
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
    if (inputs == nullptr || nbInputs != 2) return 0;
    int64_t const max_b = inputs[0].max.d[0];
    int64_t const n = inputs[1].max.d[0];
    if (max_b < 1 || n < 1 || !fc::head_check(mCfg, n).empty()) return 0;
    // Valid for every batch <= max_b (head_workspace_bytes is non-decreasing in B).
    return static_cast<size_t>(fc::head_workspace_bytes(mCfg, max_b, n));
  }

  char const* getTimingCacheID() noexcept override { return nullptr; }

  // ---- IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    if (in == nullptr || out == nullptr || nbInputs != 2 || nbOutputs != 2) return -1;
    if (in[0].dims.nbDims != 2 || in[1].dims.nbDims != 2 || in[0].dims.d[1] != in[1].dims.d[1]) return -1;
    std::string const why = fc::head_check(mCfg, in[1].dims.d[0]);
    if (!why.empty()) {
      log_error(why);
      return -1;
    }
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    try {
      if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) return -1;
      fc::HeadArgs a;
      if (!to_dtype(inputDesc[0].type, &a.dtype) || inputDesc[1].type != inputDesc[0].type) {
        log_error("unsupported input data type");
        return -1;
      }
      a.B = inputDesc[0].dims.d[0];
      a.D = inputDesc[0].dims.d[1];
      a.N = inputDesc[1].dims.d[0];
      if (a.B == 0) return 0;  // empty batch: nothing to write
      a.x = inputs[0];
      a.ldx = a.D;  // TensorRT linear tensors are dense, row-major
      a.bank = inputs[1];
      a.ldb = a.D;
      a.cfg = mCfg;
      a.score = static_cast<float*>(outputs[0]);
      a.pred = static_cast<int32_t*>(outputs[1]);
      a.workspace = workspace;
      a.workspace_bytes = fc::head_workspace_bytes(mCfg, a.B, a.N);  // what getWorkspaceSize reserved covers it
      if (mSmCount <= 0) {
        std::string err;
        int const dev = fc::current_device(&err);
        mSmCount = dev >= 0 ? fc::device_sm_count(dev, &err) : -1;
        if (mSmCount <= 0) {
          log_error(err);
          return -1;
        }
      }
      a.sm_count = mSmCount;
      a.stream = stream;
      std::string const err = fc::head_score(a);
      if (!err.empty()) {
        log_error(err);
        return -1;
      }
      return 0;
    } catch (...) {
      log_error("unexpected exception in enqueue");
      return -1;
    }
  }

  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFieldCollection; }

 private:
  void buildFields() {
    mNumId = static_cast<int32_t>(mCfg.num_id);
    mGroups = static_cast<int32_t>(mCfg.groups);
    mTemperature = mCfg.temperature;
    mNormalize = mCfg.normalize ? 1 : 0;
    mMethod = mCfg.method == fc::HeadMethod::kMcm ? "mcm" : "neglabel";
    mFields.clear();
    mFields.emplace_back("num_id", &mNumId, PluginFieldType::kINT32, 1);
    mFields.emplace_back("groups", &mGroups, PluginFieldType::kINT32, 1);
    mFields.emplace_back("temperature", &mTemperature, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back("method", mMethod.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(mMethod.size()));
    mFields.emplace_back("normalize", &mNormalize, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
  }

  fc::HeadConfig mCfg;
  int mSmCount = 0;
  // Serialized state (pointed to by mFields).
  int32_t mNumId = 0, mGroups = 1, mNormalize = 1;
  float mTemperature = 0.01f;
  std::string mMethod;
  std::vector<PluginField> mFields;
  PluginFieldCollection mFieldCollection{};
};

class SegmentLseScoreCreator final : public IPluginCreatorV3One {
 public:
  SegmentLseScoreCreator() {
    mFields.emplace_back("num_id", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("groups", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("temperature", nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back("method", nullptr, PluginFieldType::kCHAR, 0);
    mFields.emplace_back("normalize", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
  }

  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }

  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc_in,
                          TensorRTPhase /*phase*/) noexcept override {
    try {
      fc::HeadConfig cfg;
      std::string const why = parse_fields(fc_in, &cfg);
      if (!why.empty()) {
        log_error(std::string(name ? name : "?") + ": " + why);
        return nullptr;
      }
      return new SegmentLseScorePlugin(cfg);
    } catch (...) {
      return nullptr;
    }
  }

 private:
  std::vector<PluginField> mFields;
  PluginFieldCollection mFieldCollection{};
};

bool register_once() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    static SegmentLseScoreCreator creator;
    IPluginRegistry* reg = getPluginRegistry();
    ok = reg != nullptr && reg->registerCreator(creator, kPluginNamespace);
    if (!ok) log_error("could not register the plugin creator with TensorRT's plugin registry");
  });
  return ok;
}

// Register when the library is loaded (ctypes.CDLL / dlopen / trtexec --staticPlugins).
struct AutoRegister {
  AutoRegister() { register_once(); }
};
AutoRegister const kAutoRegister;

}  // namespace
}  // namespace trt
}  // namespace fastood

extern "C" __attribute__((visibility("default"))) bool fastood_register_trt_plugin() {
  return fastood::trt::register_once();
}

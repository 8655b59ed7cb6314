// Drives the SegmentLSEScore plugin through the calls TensorRT's builder and runtime make,
// against the stand-in API in this folder (no TensorRT).
// Usage: plugin_harness LIB              the builder/runtime answers (exit 0 = all checks passed);
//                                        enqueue is not called
//        plugin_harness LIB --enqueue DIR  build phase → serialise → runtime phase → enqueue on
//                                        DIR/x.bin, bank.bin with DIR/args.txt (the format of
//                                        csrc/cuda/testing/emu_driver.cpp's head mode); writes
//                                        score.bin, pred.bin. For a LIB whose kernels were built
//                                        for the CPU emulator (csrc/cuda/testing/): host buffers
//                                        stand in for device memory.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include "emu_io.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

using namespace nvinfer1;

extern "C" int stub_creator_count();
extern "C" IPluginCreatorInterface* stub_creator(int i);

namespace {
int failures = 0;
#define CHECK(c)                                                    \
  do {                                                              \
    if (!(c)) {                                                     \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);      \
      ++failures;                                                   \
    }                                                               \
  } while (0)

struct Expr final : IDimensionExpr {};     // opaque dimension expressions for getOutputShapes
struct Builder final : IExprBuilder {};    // the plugin builds no new expressions

struct Views {
  IPluginV3OneCore* core;
  IPluginV3OneBuild* build;
  IPluginV3OneRuntime* rt;
};
Views views(IPluginV3* p) {
  return {static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE)),
          static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD)),
          static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME))};
}

Dims dims2(int64_t a, int64_t b) {
  Dims d{};
  d.nbDims = 2;
  d.d[0] = a;
  d.d[1] = b;
  return d;
}
}  // namespace

// The runtime path TensorRT takes for one engine: a build-phase plugin from the node's
// attributes (configurePlugin over the batch profile [1, max_batch], getWorkspaceSize at its
// max), its serialised fields → a runtime-phase plugin (engine deserialisation),
// onShapeChange for this batch, then enqueue with a workspace of exactly the reserved size.
int enqueue_mode(IPluginCreatorV3One* cr, const std::string& dir) {
  using namespace emu_io;
  auto kv = read_args(dir);
  int32_t k = static_cast<int32_t>(geti(kv, "num_id")), g = static_cast<int32_t>(geti(kv, "groups"));
  int32_t norm = static_cast<int32_t>(geti(kv, "normalize"));
  float t = std::stof(kv.at("temperature"));
  const std::string method = kv.at("method"), dtype = kv.at("dtype");
  PluginField f[] = {{"num_id", &k, PluginFieldType::kINT32, 1},
                     {"groups", &g, PluginFieldType::kINT32, 1},
                     {"temperature", &t, PluginFieldType::kFLOAT32, 1},
                     {"method", method.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(method.size() + 1)},
                     {"normalize", &norm, PluginFieldType::kINT32, 1}};
  PluginFieldCollection fc{5, f};
  std::unique_ptr<IPluginV3> built(cr->createPlugin("head", &fc, TensorRTPhase::kBUILD));
  if (!built) die("createPlugin(kBUILD) refused the attributes");
  const DataType ty = dtype == "float16" ? DataType::kHALF : dtype == "bfloat16" ? DataType::kBF16 : DataType::kFLOAT;
  const int64_t B = geti(kv, "B"), N = geti(kv, "N"), D = geti(kv, "D"), max_b = geti(kv, "max_batch");
  DynamicPluginTensorDesc io[4]{};
  for (auto& d : io) d.desc.format = TensorFormat::kLINEAR;
  io[0].desc.type = io[1].desc.type = ty;
  io[2].desc.type = DataType::kFLOAT;
  io[3].desc.type = DataType::kINT32;
  io[0].desc.dims = dims2(-1, D);
  io[0].min = dims2(1, D);
  io[0].opt = io[0].max = dims2(max_b, D);
  io[1].desc.dims = io[1].min = io[1].opt = io[1].max = dims2(N, D);
  Views vb = views(built.get());
  for (int pos = 0; pos < 4; ++pos)
    if (!vb.build->supportsFormatCombination(pos, io, 2, 2)) die("supportsFormatCombination refused the types");
  if (vb.build->configurePlugin(io, 2, io + 2, 2) != 0) die("configurePlugin refused the shapes");
  const size_t ws_bytes = vb.build->getWorkspaceSize(io, 2, io + 2, 2);

  std::unique_ptr<IPluginV3> rt(cr->createPlugin("head", vb.rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  if (!rt) die("createPlugin(kRUNTIME) refused the serialised fields");
  std::unique_ptr<IPluginV3> ctx(views(rt.get()).rt->attachToContext(nullptr));
  IPluginV3OneRuntime* run = views(ctx.get()).rt;
  PluginTensorDesc in[2]{}, out[2]{};
  in[0].dims = dims2(B, D);
  in[1].dims = dims2(N, D);
  in[0].type = in[1].type = ty;
  out[0].dims = out[1].dims = Dims{1, {B}};
  out[0].type = DataType::kFLOAT;
  out[1].type = DataType::kINT32;
  if (run->onShapeChange(in, 2, out, 2) != 0) die("onShapeChange refused the shapes");
  Operand x(dir + "/x.bin"), bank(dir + "/bank.bin");
  Buffer score(static_cast<size_t>(B) * 4), pred(static_cast<size_t>(B) * 4), ws(ws_bytes);
  void const* inputs[2] = {x.base, bank.base};
  void* outputs[2] = {score.ptr, pred.ptr};
  if (run->enqueue(in, out, inputs, outputs, ws.ptr, nullptr) != 0) die("enqueue failed", 3);
  write_file(dir + "/score.bin", score.ptr, score.bytes);
  write_file(dir + "/pred.bin", pred.ptr, pred.bytes);
  std::printf("enqueue: B=%lld N=%lld D=%lld workspace %zu bytes\n", static_cast<long long>(B),
              static_cast<long long>(N), static_cast<long long>(D), ws_bytes);
  return 0;
}

int main(int argc, char** argv) {
  const bool enqueue = argc == 4 && std::string(argv[2]) == "--enqueue";
  if (argc != 2 && !enqueue) {
    std::printf("usage: %s libfastood_trt_plugin.so [--enqueue DIR]\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (lib == nullptr) {
    std::printf("dlopen failed: %s\n", dlerror());
    return 2;
  }
  // Loading registered the creator once; the explicit entry point is idempotent.
  CHECK(stub_creator_count() == 1);
  auto reg = reinterpret_cast<bool (*)()>(dlsym(lib, "fastood_register_trt_plugin"));
  CHECK(reg != nullptr && reg() && reg());
  CHECK(stub_creator_count() == 1);
  auto* cr = static_cast<IPluginCreatorV3One*>(stub_creator(0));
  if (cr == nullptr) return 1;
  if (enqueue) return failures == 0 ? enqueue_mode(cr, argv[3]) : 1;
  CHECK(std::string(cr->getPluginName()) == "SegmentLSEScore");
  CHECK(std::string(cr->getPluginVersion()) == "1" && std::string(cr->getPluginNamespace()).empty());
  CHECK(cr->getFieldNames() != nullptr && cr->getFieldNames()->nbFields == 5);

  // Fields as an ONNX parser passes node attributes (the string length with its NUL, extra fields).
  int32_t k = 1000, g = 100, norm = 1;
  float t = 0.01f;
  PluginField f[] = {{"num_id", &k, PluginFieldType::kINT32, 1},
                     {"groups", &g, PluginFieldType::kINT32, 1},
                     {"temperature", &t, PluginFieldType::kFLOAT32, 1},
                     {"method", "neglabel", PluginFieldType::kCHAR, 9},
                     {"normalize", &norm, PluginFieldType::kINT32, 1},
                     {"plugin_version", "1", PluginFieldType::kCHAR, 2}};
  PluginFieldCollection fc{6, f};
  std::unique_ptr<IPluginV3> p(cr->createPlugin("head", &fc, TensorRTPhase::kBUILD));
  CHECK(p != nullptr);
  if (!p) return 1;
  Views v = views(p.get());
  CHECK(v.core && v.build && v.rt);
  CHECK(std::string(v.core->getPluginName()) == "SegmentLSEScore");
  CHECK(v.build->getNbOutputs() == 2);

  DataType in[2] = {DataType::kHALF, DataType::kHALF}, out[2];
  CHECK(v.build->getOutputDataTypes(out, 2, in, 2) == 0 && out[0] == DataType::kFLOAT && out[1] == DataType::kINT32);

  Expr bexpr, dexpr, nexpr;
  DimsExprs ein[2]{}, eout[2]{};
  ein[0].nbDims = 2; ein[0].d[0] = &bexpr; ein[0].d[1] = &dexpr;
  ein[1].nbDims = 2; ein[1].d[0] = &nexpr; ein[1].d[1] = &dexpr;
  Builder eb;
  CHECK(v.build->getOutputShapes(ein, 2, nullptr, 0, eout, 2, eb) == 0);
  CHECK(eout[0].nbDims == 1 && eout[0].d[0] == &bexpr && eout[1].nbDims == 1 && eout[1].d[0] == &bexpr);
  ein[1].nbDims = 3;
  CHECK(v.build->getOutputShapes(ein, 2, nullptr, 0, eout, 2, eb) != 0);

  DynamicPluginTensorDesc io[4]{};
  for (auto& d : io) d.desc.format = TensorFormat::kLINEAR;
  const DataType ok_types[] = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16};
  for (DataType ty : ok_types) {
    io[0].desc.type = io[1].desc.type = ty;
    io[2].desc.type = DataType::kFLOAT;
    io[3].desc.type = DataType::kINT32;
    for (int pos = 0; pos < 4; ++pos) CHECK(v.build->supportsFormatCombination(pos, io, 2, 2));
  }
  io[0].desc.type = DataType::kHALF;
  io[1].desc.type = DataType::kFLOAT;
  CHECK(!v.build->supportsFormatCombination(1, io, 2, 2));  // bank must share the features' type
  io[0].desc.type = DataType::kINT32;
  CHECK(!v.build->supportsFormatCombination(0, io, 2, 2));
  io[0].desc.type = io[1].desc.type = DataType::kHALF;
  io[2].desc.type = DataType::kHALF;
  CHECK(!v.build->supportsFormatCombination(2, io, 2, 2));
  io[2].desc.type = DataType::kFLOAT;
  io[3].desc.type = DataType::kINT64;
  CHECK(!v.build->supportsFormatCombination(3, io, 2, 2));
  io[3].desc.type = DataType::kINT32;

  io[0].desc.dims = dims2(-1, 512);
  io[1].desc.dims = dims2(11400, 512);
  io[0].min = dims2(1, 512);
  io[0].opt = dims2(32, 512);
  io[0].max = dims2(256, 512);
  io[1].min = io[1].opt = io[1].max = io[1].desc.dims;
  CHECK(v.build->configurePlugin(io, 2, io + 2, 2) == 0);
  const size_t ws256 = v.build->getWorkspaceSize(io, 2, io + 2, 2);
  io[0].max = dims2(8, 512);
  const size_t ws8 = v.build->getWorkspaceSize(io, 2, io + 2, 2);
  std::printf("workspace: B<=256 %zu bytes, B<=8 %zu bytes\n", ws256, ws8);
  CHECK(ws256 >= static_cast<size_t>(256) * 101 * 4 && ws8 > 0 && ws8 <= ws256);
  CHECK(ws256 <= (size_t{16} << 20) + (size_t{1} << 20));
  io[1].desc.dims = dims2(11400, 256);
  CHECK(v.build->configurePlugin(io, 2, io + 2, 2) != 0);  // D mismatch
  io[1].desc.dims = dims2(1000, 512);
  CHECK(v.build->configurePlugin(io, 2, io + 2, 2) != 0);  // no negatives for num_id = 1000
  io[1].desc.dims = dims2(11400, 512);

  PluginTensorDesc rin[2]{}, rout[2]{};
  rin[0].dims = dims2(17, 512);
  rin[1].dims = dims2(11400, 512);
  CHECK(v.rt->onShapeChange(rin, 2, rout, 2) == 0);
  rin[1].dims = dims2(11400, 511);
  CHECK(v.rt->onShapeChange(rin, 2, rout, 2) != 0);

  // Serialisation round trip: runtime-phase creation from the serialised fields.
  PluginFieldCollection const* ser = v.rt->getFieldsToSerialize();
  CHECK(ser != nullptr && ser->nbFields == 5);
  std::unique_ptr<IPluginV3> p2(cr->createPlugin("head", ser, TensorRTPhase::kRUNTIME));
  CHECK(p2 != nullptr);
  if (p2) {
    PluginFieldCollection const* ser2 = views(p2.get()).rt->getFieldsToSerialize();
    for (int i = 0; i < 5 && ser2 != nullptr; ++i) {
      CHECK(std::strcmp(ser->fields[i].name, ser2->fields[i].name) == 0);
      CHECK(ser->fields[i].type == ser2->fields[i].type && ser->fields[i].length == ser2->fields[i].length);
      const size_t bytes = ser->fields[i].type == PluginFieldType::kCHAR ? static_cast<size_t>(ser->fields[i].length) : 4;
      CHECK(std::memcmp(ser->fields[i].data, ser2->fields[i].data, bytes) == 0);
    }
    CHECK(std::string(static_cast<char const*>(ser->fields[3].data), static_cast<size_t>(ser->fields[3].length)) ==
          "neglabel");
  }
  std::unique_ptr<IPluginV3> c(p->clone());
  CHECK(c != nullptr);
  std::unique_ptr<IPluginV3> att(v.rt->attachToContext(nullptr));
  CHECK(att != nullptr && views(att.get()).rt->getFieldsToSerialize()->nbFields == 5);

  // Other attribute encodings, and bad ones.
  int64_t k64 = 10;
  double t64 = 1.0;
  PluginField fm[] = {{"num_id", &k64, PluginFieldType::kINT64, 1},
                      {"temperature", &t64, PluginFieldType::kFLOAT64, 1},
                      {"method", "mcm", PluginFieldType::kCHAR, 3}};
  PluginFieldCollection fcm{3, fm};
  std::unique_ptr<IPluginV3> pm(cr->createPlugin("mcm", &fcm, TensorRTPhase::kBUILD));
  CHECK(pm != nullptr);
  if (pm) {
    Views vm = views(pm.get());
    io[1].desc.dims = dims2(10, 512);  // MCM: the bank may be just the K ID rows
    CHECK(vm.build->configurePlugin(io, 2, io + 2, 2) == 0);
  }
  PluginField fb[] = {f[0], f[1], f[2], {"method", "energy", PluginFieldType::kCHAR, 6}};
  PluginFieldCollection fcb{4, fb};
  CHECK(cr->createPlugin("bad", &fcb, TensorRTPhase::kBUILD) == nullptr);
  PluginFieldCollection fcmiss{2, f};  // no temperature, no method
  CHECK(cr->createPlugin("bad", &fcmiss, TensorRTPhase::kBUILD) == nullptr);
  float t0 = 0.0f;
  PluginField ft[] = {f[0], f[1], {"temperature", &t0, PluginFieldType::kFLOAT32, 1}, f[3]};
  PluginFieldCollection fct{4, ft};
  CHECK(cr->createPlugin("bad", &fct, TensorRTPhase::kBUILD) == nullptr);

  if (failures == 0) std::printf("plugin harness: all checks passed\n");
  else std::printf("plugin harness: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}

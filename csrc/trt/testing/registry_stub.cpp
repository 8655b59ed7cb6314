// TEST STAND-IN for libnvinfer's plugin registry (see NvInferRuntime.h in this folder):
// records the creators a plugin library registers so plugin_harness.cpp can reach them.
#include <NvInferRuntime.h>

#include <vector>

namespace {
struct StubRegistry final : nvinfer1::IPluginRegistry {
  std::vector<nvinfer1::IPluginCreatorInterface*> creators;
  bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, char const* const) noexcept override {
    for (auto* c : creators)
      if (c == &creator) return false;  // a second registration of the same creator fails, as in TensorRT
    creators.push_back(&creator);
    return true;
  }
};
StubRegistry g_registry;
}  // namespace

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return &g_registry; }
extern "C" int stub_creator_count() { return static_cast<int>(g_registry.creators.size()); }
extern "C" nvinfer1::IPluginCreatorInterface* stub_creator(int i) {
  return i >= 0 && i < stub_creator_count() ? g_registry.creators[static_cast<size_t>(i)] : nullptr;
}

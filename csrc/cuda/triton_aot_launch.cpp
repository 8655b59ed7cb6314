// Launch an ahead-of-time compiled Triton kernel (triton_aot.h) with the CUDA driver API.
//
// The driver entry points come from the CUDA runtime (cudaGetDriverEntryPointByVersion),
// not from linking libcuda: fastood._C links the runtime statically and must import on
// machines without a driver. The cubin is loaded once per CUDA context (the runtime's
// primary context of the current device) and cached with its CUfunction.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda/triton_aot.h"

namespace fastood {
namespace cuda {
namespace aot {
namespace {

struct Driver {
  CUresult (*ctx_get_current)(CUcontext*) = nullptr;
  CUresult (*ctx_get_device)(CUdevice*) = nullptr;
  CUresult (*device_get_attribute)(int*, CUdevice_attribute, CUdevice) = nullptr;
  CUresult (*module_load_data)(CUmodule*, const void*) = nullptr;
  CUresult (*module_get_function)(CUfunction*, CUmodule, const char*) = nullptr;
  CUresult (*func_set_attribute)(CUfunction, CUfunction_attribute, int) = nullptr;
  CUresult (*launch_kernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                            void**, void**) = nullptr;
  CUresult (*get_error_string)(CUresult, const char**) = nullptr;
  std::string error;
};

template <typename F>
bool entry(const char* name, F* fn, std::string* err) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q{};
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || p == nullptr) {
    *err = std::string("CUDA driver entry point ") + name + " unavailable (" + cudaGetErrorName(e) + ")";
    return false;
  }
  *fn = reinterpret_cast<F>(p);
  return true;
}

const Driver& driver() {
  static const Driver d = [] {
    Driver x;
    std::string& err = x.error;
    (void)(entry("cuCtxGetCurrent", &x.ctx_get_current, &err) && entry("cuCtxGetDevice", &x.ctx_get_device, &err) &&
           entry("cuDeviceGetAttribute", &x.device_get_attribute, &err) &&
           entry("cuModuleLoadData", &x.module_load_data, &err) &&
           entry("cuModuleGetFunction", &x.module_get_function, &err) &&
           entry("cuFuncSetAttribute", &x.func_set_attribute, &err) &&
           entry("cuLaunchKernel", &x.launch_kernel, &err) && entry("cuGetErrorString", &x.get_error_string, &err));
    return x;
  }();
  return d;
}

std::string cu_error(const Driver& d, const char* what, CUresult r) {
  const char* s = nullptr;
  if (d.get_error_string != nullptr) d.get_error_string(r, &s);
  return std::string(what) + " failed: " + (s ? s : "CUresult " + std::to_string(static_cast<int>(r)));
}

std::mutex g_mutex;
std::map<std::pair<const TritonKernelImage*, CUcontext>, CUfunction> g_functions;

}  // namespace

std::string launch(const TritonKernelImage& k, unsigned gx, unsigned gy, unsigned gz, const std::vector<TritonArg>& args,
                   void* global_scratch, void* stream) {
  PackedParams packed;
  std::string why = pack_params(k, args, global_scratch, nullptr, &packed);
  if (!why.empty()) return why;
  if (k.profile_scratch_size > 0) return std::string(k.name) + ": profiling builds (profile scratch) are not supported";
  const Driver& d = driver();
  if (!d.error.empty()) return d.error;
  // Make sure the runtime's primary context of the current device exists and is current.
  const cudaError_t ce = cudaFree(nullptr);
  if (ce != cudaSuccess) return std::string("cudaFree(0): ") + cudaGetErrorName(ce);
  CUcontext ctx = nullptr;
  CUresult r = d.ctx_get_current(&ctx);
  if (r != CUDA_SUCCESS || ctx == nullptr) return cu_error(d, "cuCtxGetCurrent", r);

  CUfunction fn = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_functions.find({&k, ctx});
    if (it != g_functions.end()) {
      fn = it->second;
    } else {
      CUdevice dev = 0;
      int major = 0, minor = 0;
      if ((r = d.ctx_get_device(&dev)) != CUDA_SUCCESS) return cu_error(d, "cuCtxGetDevice", r);
      d.device_get_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
      d.device_get_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
      if (major * 10 + minor != k.arch)
        return std::string(k.name) + ": compiled for sm_" + std::to_string(k.arch) + ", the device is sm_" +
               std::to_string(major * 10 + minor);
      CUmodule mod = nullptr;
      if ((r = d.module_load_data(&mod, k.cubin)) != CUDA_SUCCESS) return cu_error(d, "cuModuleLoadData", r);
      if ((r = d.module_get_function(&fn, mod, k.name)) != CUDA_SUCCESS) return cu_error(d, "cuModuleGetFunction", r);
      // Above 48 KB a kernel must opt in to its dynamic shared memory.
      if (k.shared > 48 * 1024 &&
          (r = d.func_set_attribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, k.shared)) != CUDA_SUCCESS)
        return cu_error(d, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", r);
      g_functions[{&k, ctx}] = fn;  // the module stays loaded for the context's lifetime
    }
  }
  r = d.launch_kernel(fn, gx, gy, gz, 32u * static_cast<unsigned>(k.num_warps), 1, 1, static_cast<unsigned>(k.shared),
                      static_cast<CUstream>(stream), packed.pointers.data(), nullptr);
  if (r != CUDA_SUCCESS) return cu_error(d, "cuLaunchKernel", r);
  return std::string();
}

}  // namespace aot
}  // namespace cuda
}  // namespace fastood

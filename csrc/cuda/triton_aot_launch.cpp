// Launch an ahead-of-time compiled Triton kernel (triton_aot.h) with the CUDA driver API.
//
// The driver entry points come from the CUDA runtime (cudaGetDriverEntryPointByVersion),
// not from linking libcuda: fastood._C links the runtime statically and must import on
// machines without a driver. The cubin is loaded once per CUDA context (the runtime's
// primary context of the current device) and cached with its CUfunction.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstring>
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

// Entry points only the TMA / fill paths need, resolved separately: a driver without
// cuTensorMapEncodeTiled (< 12.0) still launches the pointer variants.
struct TmaDriver {
  CUresult (*encode_tiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                           const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                           CUtensorMapL2promotion, CUtensorMapFloatOOBfill) = nullptr;
  CUresult (*driver_get_version)(int*) = nullptr;
  CUresult (*memset_d32_async)(CUdeviceptr, unsigned int, size_t, CUstream) = nullptr;
  std::string error;
};

// triton_aot.h carries the CUDA enums as ints (it is CUDA-free): they must be cuda.h's.
static_assert(CU_TENSOR_MAP_INTERLEAVE_NONE == 0 && CU_TENSOR_MAP_L2_PROMOTION_L2_128B == 2 &&
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE == 0 && CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA == 1 &&
                  CU_TENSOR_MAP_SWIZZLE_128B == 3 && CU_TENSOR_MAP_DATA_TYPE_FLOAT16 == 6 &&
                  CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 == 9,
              "CUDA tensor-map enums differ from triton_aot.h's numbering");
static_assert(sizeof(CUtensorMap) == kTensorMapBytes && alignof(CUtensorMap) >= kTensorMapAlign,
              "CUtensorMap is not 128 bytes, >= 64-aligned");

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

const TmaDriver& tma_driver() {
  static const TmaDriver d = [] {
    TmaDriver x;
    std::string& err = x.error;
    (void)(entry("cuTensorMapEncodeTiled", &x.encode_tiled, &err) &&
           entry("cuDriverGetVersion", &x.driver_get_version, &err) &&
           entry("cuMemsetD32Async", &x.memset_d32_async, &err));
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

std::string encode_tensor_map(const TritonTensorDesc& desc, const TensorDescArg& a, TensorMap* out) {
  TmaEncodeArgs e;
  std::string why = tma_encode_args(desc, a, &e);
  if (!why.empty()) return why;
  const Driver& d = driver();
  const TmaDriver& t = tma_driver();
  if (!d.error.empty()) return d.error;
  if (!t.error.empty()) return t.error;
  CUtensorMap map;
  const cuuint64_t* dims = e.global_dim;
  const cuuint64_t* strides = e.global_strides;
  const CUresult r = t.encode_tiled(&map, static_cast<CUtensorMapDataType>(e.data_type), e.rank,
                                    reinterpret_cast<void*>(static_cast<uintptr_t>(e.address)), dims, strides, e.box_dim,
                                    e.element_strides, static_cast<CUtensorMapInterleave>(e.interleave),
                                    static_cast<CUtensorMapSwizzle>(e.swizzle),
                                    static_cast<CUtensorMapL2promotion>(e.l2_promotion),
                                    static_cast<CUtensorMapFloatOOBfill>(e.oob_fill));
  if (r != CUDA_SUCCESS) return cu_error(d, "cuTensorMapEncodeTiled", r);
  int version = 0;
  if (t.driver_get_version(&version) == CUDA_SUCCESS && version <= 13010 && e.small_tensor) {
    // Triton's (and CUTLASS's) fix-up for small tensors on older drivers (nvidia/driver.c).
    uint64_t q1 = 0;
    std::memcpy(&q1, reinterpret_cast<unsigned char*>(&map) + 8, 8);
    q1 &= ~(uint64_t{1} << 21);
    std::memcpy(reinterpret_cast<unsigned char*>(&map) + 8, &q1, 8);
  }
  std::memcpy(out->bytes, &map, kTensorMapBytes);
  out->src = a;
  return std::string();
}

std::string memset_d32(void* dst, uint32_t value, std::size_t count, void* stream) {
  if (count == 0) return std::string();
  const Driver& d = driver();
  const TmaDriver& t = tma_driver();
  if (!d.error.empty()) return d.error;
  if (!t.error.empty()) return t.error;
  const CUresult r = t.memset_d32_async(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(dst)), value, count,
                                        static_cast<CUstream>(stream));
  return r == CUDA_SUCCESS ? std::string() : cu_error(d, "cuMemsetD32Async", r);
}

}  // namespace aot
}  // namespace cuda
}  // namespace fastood

// Which kernels segment_lse() (csrc/cuda/segment_lse.cu) runs: the rule alone, in plain
// C++17 with no CUDA header, so that tests compile and check it on machines without a GPU
// (tests/test_cuda_dispatch.py) and the dispatcher and those tests share one definition.
//
// Order (README, architecture):
//   1. kSm90 — the Hopper Triton kernels compiled ahead of time (segment_lse_sm90_aot):
//      compute capability 9.x, fp16/bf16, at least kSm90MinRows rows, an sm90 kernel set
//      embedded for the device and dtype, and segment_lse_sm90_aot_applicable() empty;
//   2. kAot — the portable Triton kernel compiled ahead of time (segment_lse_aot): an image
//      embedded for the device and dtype and segment_lse_aot_applicable() empty;
//   3. kCuda — the CUDA C++ (WMMA / fp32 FMA) kernel: always.
// FASTOOD_CUDA_PATH=sm90|aot|cuda forces one (tools/gpu_check.sh compares them); a forced
// path that cannot run is an error naming why, never a silent fallback. "auto" or unset:
// the order above.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace fastood {
namespace cuda {

enum class CudaPath : int32_t { kCuda = 0, kAot = 1, kSm90 = 2 };

// Below this many rows the portable kernel is predicted faster than the Hopper sequence
// (three to five launches, one tile of critical path): the Python launcher's SM90_MIN_ROWS
// (fastood/ops/_triton_segment_lse_sm90.py, a bench/sol.py prediction, not a measurement).
constexpr int64_t kSm90MinRows = 1024;

inline const char* cuda_path_name(CudaPath p) {
  switch (p) {
    case CudaPath::kSm90: return "sm90";
    case CudaPath::kAot: return "aot";
    default: return "cuda";
  }
}

struct PathChoice {
  CudaPath path = CudaPath::kCuda;
  std::string error;  // non-empty: nothing may run (bad or unsatisfiable FASTOOD_CUDA_PATH)
  std::string why;    // why a faster path was not taken ("" when the first one was)
};

// The decision. cc_major: the device's compute capability major (0 when unknown);
// half_dtype: fp16 or bf16 operands; rows: B; sm90_unfit / aot_unfit: "" when that kernel
// set is embedded for the device and dtype and accepts these operands, else the reason
// (nullptr set, segment_lse_*_applicable's message); forced: FASTOOD_CUDA_PATH's value or
// nullptr.
inline PathChoice choose_cuda_path(int cc_major, bool half_dtype, int64_t rows, const std::string& sm90_unfit,
                                   const std::string& aot_unfit, const char* forced) {
  PathChoice c;
  std::string no_sm90;
  if (cc_major != 9) no_sm90 = "compute capability " + std::to_string(cc_major) + ".x is not 9.x";
  else if (!half_dtype) no_sm90 = "the sm90 kernels take fp16/bf16 only";
  else if (!sm90_unfit.empty()) no_sm90 = sm90_unfit;
  const bool small = rows < kSm90MinRows;
  const std::string f = forced == nullptr ? std::string() : std::string(forced);
  if (f.empty() || f == "auto") {
    if (no_sm90.empty() && !small) {
      c.path = CudaPath::kSm90;
      return c;
    }
    c.why = "sm90: " + (no_sm90.empty() ? "fewer than " + std::to_string(kSm90MinRows) + " rows" : no_sm90);
    if (aot_unfit.empty()) {
      c.path = CudaPath::kAot;
      return c;
    }
    c.why += "; aot: " + aot_unfit;
    c.path = CudaPath::kCuda;
    return c;
  }
  if (f == "sm90") {  // forced: the row threshold is a speed rule, not a correctness one
    if (!no_sm90.empty()) c.error = "FASTOOD_CUDA_PATH=sm90 but the sm90 kernels cannot run: " + no_sm90;
    c.path = CudaPath::kSm90;
  } else if (f == "aot") {
    if (!aot_unfit.empty()) c.error = "FASTOOD_CUDA_PATH=aot but the portable AOT kernel cannot run: " + aot_unfit;
    c.path = CudaPath::kAot;
  } else if (f == "cuda") {
    c.path = CudaPath::kCuda;
  } else {
    c.error = "FASTOOD_CUDA_PATH must be sm90, aot, cuda or auto, got '" + f + "'";
  }
  if (c.error.empty()) c.why = std::string("forced by FASTOOD_CUDA_PATH=") + f;
  return c;
}

}  // namespace cuda
}  // namespace fastood

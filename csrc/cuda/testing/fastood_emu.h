// TEST ONLY — a CPU emulator of the CUDA execution model, so that fastood's kernels
// (csrc/cuda/*.cu, unchanged but for their `<<<…>>>` launches, which the test build
// rewrites into fastood_emu::launch) run and are checked on a machine without a GPU.
//
// Model (what the kernels rely on, and nothing more):
//   * a launch runs its blocks one after another, in a seeded random order (a kernel
//     whose blocks depend on each other's order gives different results);
//   * every thread of a block is an OS thread; __syncthreads() is a std::barrier over the
//     block's live threads (a thread that returns drops out, as on the hardware);
//   * __shared__ variables are function statics: one instance, shared by the block's
//     threads, reused by the next block (blocks never run at the same time);
//   * warp collectives (__shfl_xor_sync, __syncwarp, WMMA) use a barrier per warp of 32;
//     the "_sync" ones require every lane of the warp to be live (checked);
//   * WMMA fragments hold the whole 16×16 tile in every lane (the real distribution is
//     opaque to CUDA code, so no correct kernel can tell); loads and stores check the
//     hardware's rules (256-bit aligned pointers, ldm a multiple of 16 bytes);
//   * streams are ignored: launches are synchronous, so stream order holds trivially.
// Built with -fsanitize=thread, the barriers give ThreadSanitizer the happens-before
// edges of the CUDA model, so a missing __syncthreads is reported as a data race
// (what compute-sanitizer's racecheck finds on a GPU); with -fsanitize=address every
// global-memory access is bounds-checked against the caller's exact-size buffers
// (compute-sanitizer's memcheck).
//
// What it cannot show: timing, occupancy, register/shared-memory limits, the real
// fp16/bf16 tensor-core rounding (products are exact, sums are fp32 here as there, but
// in another order), and device math intrinsics' last-ulp differences from glibc.
#pragma once

#include <vector_functions.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

// Built-in variables of a kernel, set per emulated thread.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace fastood_emu {

constexpr int kWarpSize = 32;

// Run `body` (one kernel invocation with its arguments bound) on grid × block threads.
// A bad configuration sets the runtime's last error instead (as a real launch does);
// dynamic shared memory (unused by fastood) is not emulated and stops the process.
void launch(dim3 grid, dim3 block, std::size_t dynamic_smem, const void* stream, const std::function<void()>& body);

// Abort the process with a message naming the emulated thread (a kernel bug the
// hardware would also punish: misaligned WMMA pointer, collective with exited lanes…).
[[noreturn]] void fail(const char* what);

void syncthreads();
void syncwarp();
int lane();
// Exchange 8 bytes across the warp: every lane publishes `mine` and gets lane `src`'s.
std::uint64_t warp_exchange(std::uint64_t mine, int src);
// Fail unless all 32 lanes of the caller's warp are live (a full-mask collective).
void require_full_warp(const char* op);
// 1 when the calling lane should perform a warp-collective store (lane 0).
bool collective_writer();

}  // namespace fastood_emu

// ---- device-side API used by the kernels ------------------------------------------
inline void __syncthreads() { fastood_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) fastood_emu::fail("__syncwarp: only the full mask is emulated");
  fastood_emu::syncwarp();
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = fastood_emu::kWarpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_xor_sync: 1- to 8-byte types only");
  if (mask != 0xffffffffu || width != fastood_emu::kWarpSize)
    fastood_emu::fail("__shfl_xor_sync: only the full mask and width 32 are emulated");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = fastood_emu::warp_exchange(bits, fastood_emu::lane() ^ (lane_mask & (fastood_emu::kWarpSize - 1)));
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// TEST ONLY — the CPU emulator's runtime (see fastood_emu.h for the model).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fastood_emu.h"

// NVIDIA's occupancy calculator (header-only, the rules the runtime applies).
#include <cuda_occupancy.h>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace fastood_emu {
namespace {

struct Warp {
  explicit Warp(int lanes) : bar(lanes), live(lanes), size(lanes) {}
  std::barrier<> bar;
  std::atomic<int> live;
  int size;
  std::uint64_t slot[kWarpSize] = {};
};

struct Block {
  explicit Block(int threads) : bar(threads) {}
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

thread_local Block* t_block = nullptr;
thread_local int t_linear = -1;  // linear thread index in the block

cudaError_t g_last_error = cudaSuccess;  // the host thread's sticky-free last error
std::mutex g_fail_mutex;

Warp& my_warp() {
  if (t_block == nullptr) fail("a device function was called outside a kernel");
  return *t_block->warps[static_cast<std::size_t>(t_linear / kWarpSize)];
}

std::uint64_t launch_seed() {
  static std::uint64_t n = 0;
  const char* env = std::getenv("FASTOOD_EMU_SEED");
  return (env ? std::strtoull(env, nullptr, 10) : 12345u) + 1000003u * n++;
}

}  // namespace

[[noreturn]] void fail(const char* what) {
  std::lock_guard<std::mutex> lock(g_fail_mutex);
  std::fprintf(stderr, "fastood_emu: %s (block (%u,%u,%u), thread (%u,%u,%u))\n", what, blockIdx.x, blockIdx.y,
               blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::abort();
}

void syncthreads() {
  if (t_block == nullptr) fail("__syncthreads outside a kernel");
  t_block->bar.arrive_and_wait();
}

void syncwarp() {
  Warp& w = my_warp();
  if (w.live.load() != w.size) fail("__syncwarp with exited lanes");
  w.bar.arrive_and_wait();
}

int lane() { return t_linear % kWarpSize; }

void require_full_warp(const char* op) {
  Warp& w = my_warp();
  if (w.size != kWarpSize || w.live.load() != kWarpSize) fail(op);
}

bool collective_writer() { return lane() == 0; }

std::uint64_t warp_exchange(std::uint64_t mine, int src) {
  require_full_warp("__shfl_xor_sync with exited or missing lanes");
  Warp& w = my_warp();
  w.slot[lane()] = mine;
  w.bar.arrive_and_wait();  // every lane has published
  const std::uint64_t got = w.slot[src];
  w.bar.arrive_and_wait();  // every lane has read before the slots are reused
  return got;
}

void launch(dim3 grid, dim3 block, std::size_t dynamic_smem, const void* /*stream*/,
            const std::function<void()>& body) {
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  if (dynamic_smem > 0) fail("dynamic shared memory is not emulated");
  if (threads == 0 || threads > 1024 || blocks == 0 || block.z > 64 || grid.y > 65535 || grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;  // what the runtime reports for such a launch
    return;
  }
  // Blocks in a random order: a correct kernel's result cannot depend on it.
  std::vector<std::uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(launch_seed()));
  for (std::uint64_t b : order) {
    const uint3 bid = make_uint3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                                 static_cast<unsigned>(b / (std::uint64_t{grid.x} * grid.y)));
    Block blk(static_cast<int>(threads));
    for (std::uint64_t w0 = 0; w0 < threads; w0 += kWarpSize)
      blk.warps.push_back(std::make_unique<Warp>(static_cast<int>(std::min<std::uint64_t>(kWarpSize, threads - w0))));
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (std::uint64_t t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        threadIdx = make_uint3(static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                               static_cast<unsigned>(t / (std::uint64_t{block.x} * block.y)));
        blockIdx = bid;
        blockDim = block;
        gridDim = grid;
        t_block = &blk;
        t_linear = static_cast<int>(t);
        body();
        // An exited thread no longer takes part in barriers (as on the hardware).
        Warp& w = my_warp();
        w.live.fetch_sub(1);
        w.bar.arrive_and_drop();
        blk.bar.arrive_and_drop();
        t_block = nullptr;
      });
    }
    for (auto& th : pool) th.join();
  }
}

}  // namespace fastood_emu

// ---- the runtime API functions the kernels' host code calls ------------------------
cudaError_t CUDARTAPI cudaGetLastError(void) {
  const cudaError_t e = fastood_emu::g_last_error;
  fastood_emu::g_last_error = cudaSuccess;
  return e;
}

const char* CUDARTAPI cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    default: return "cudaError (emulated)";
  }
}

const char* CUDARTAPI cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "emulated launch failure";
}

// The emulated device: FASTOOD_EMU_SM_COUNT multiprocessors (default 132, an H100 SXM),
// so the split planner makes the choices it makes on that GPU, and compute capability
// FASTOOD_EMU_CC (major·10 + minor, default 90), which segment_lse's path choice reads.
cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (value == nullptr || device != 0) return cudaErrorInvalidValue;
  const char* cc = std::getenv("FASTOOD_EMU_CC");
  const int arch = cc ? std::atoi(cc) : 90;
  if (attr == cudaDevAttrComputeCapabilityMajor) {
    *value = arch / 10;
    return cudaSuccess;
  }
  if (attr == cudaDevAttrComputeCapabilityMinor) {
    *value = arch % 10;
    return cudaSuccess;
  }
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  const char* env = std::getenv("FASTOOD_EMU_SM_COUNT");
  *value = env ? std::atoi(env) : 132;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGetDevice(int* device) {
  if (device == nullptr) return cudaErrorInvalidValue;
  *device = 0;
  return cudaSuccess;
}

// The occupancy API: NVIDIA's calculator (cuda_occupancy.h) on the emulated device (an
// H100 SXM: sm_90, FASTOOD_EMU_SM_COUNT SMs, 64 K registers, 2,048 threads and 228 KB of
// shared memory per SM, 1 KB reserved per block) for a kernel with the register count
// and static shared memory that ptxas reported for it, given by the test through
// FASTOOD_EMU_REGS and FASTOOD_EMU_SMEM (the emulator cannot know a kernel's registers:
// it is compiled by g++). Without FASTOOD_EMU_REGS the answer is 1 block, the least a
// launchable kernel gets.
cudaError_t CUDARTAPI cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func, int blockSize,
                                                                   size_t dynamicSMemSize) {
  if (numBlocks == nullptr || func == nullptr || blockSize <= 0) return cudaErrorInvalidValue;
  const char* regs = std::getenv("FASTOOD_EMU_REGS");
  if (regs == nullptr) {
    *numBlocks = 1;
    return cudaSuccess;
  }
  const char* smem = std::getenv("FASTOOD_EMU_SMEM");
  const char* sms = std::getenv("FASTOOD_EMU_SM_COUNT");
  cudaOccDeviceProp prop;
  prop.computeMajor = 9;
  prop.computeMinor = 0;
  prop.maxThreadsPerBlock = 1024;
  prop.maxThreadsPerMultiprocessor = 2048;
  prop.regsPerBlock = 65536;
  prop.regsPerMultiprocessor = 65536;
  prop.warpSize = 32;
  prop.sharedMemPerBlock = 48 * 1024;
  prop.sharedMemPerMultiprocessor = 228 * 1024;
  prop.numSms = sms ? std::atoi(sms) : 132;
  prop.sharedMemPerBlockOptin = 227 * 1024;
  prop.reservedSharedMemPerBlock = 1024;
  cudaOccFuncAttributes attr;
  attr.maxThreadsPerBlock = 1024;
  attr.numRegs = std::atoi(regs);
  attr.sharedSizeBytes = smem ? static_cast<size_t>(std::atoll(smem)) : 0;
  cudaOccDeviceState state;
  cudaOccResult result;
  if (cudaOccMaxActiveBlocksPerMultiprocessor(&result, &prop, &attr, &state, blockSize, dynamicSMemSize) !=
      CUDA_OCC_SUCCESS)
    return cudaErrorInvalidValue;
  *numBlocks = result.activeBlocksPerMultiprocessor;
  return cudaSuccess;
}

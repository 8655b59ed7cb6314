// GPU ONLY — runs segment_lse_sm90_aot (csrc/cuda/segment_lse_aot.cpp) on a real sm_90 device
// with the real driver-API launcher (triton_aot_launch.cpp: cuTensorMapEncodeTiled,
// cuMemsetD32Async, cuLaunchKernel) over the images of "aot_sm90_kernels.h"
// (embed_triton.py --sm90-registry), and writes the results for
// tests/test_triton_aot_tma.py's `gpu` case to compare with float64 and the Python launcher.
//
//   aot_sm90_gpu DIR   DIR/args.txt: B N D S programs splits argmax; x.bin (B×D), bank.bin (N×D) in the
//                      set's dtype, contiguous; offsets.bin (S+1 int64); scale.bin (B fp32).
//                      Writes lse.bin (B×S fp32), max0.bin (B fp32), argmax0.bin (B int64) and
//                      prints "path tma" or "path ptr: REASON".
#include <cuda_runtime_api.h>

#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "aot_sm90_kernels.h"
#include "cuda/segment_lse_aot.h"
#include "emu_io.h"

namespace fc = fastood::cuda;
using namespace emu_io;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e), 4);
}

void* upload(const std::vector<char>& host) {
  void* d = nullptr;
  check(cudaMalloc(&d, host.size() ? host.size() : 16), "cudaMalloc");
  if (!host.empty()) check(cudaMemcpy(d, host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  return d;
}

void download(const std::string& path, const void* d, std::size_t n) {
  std::vector<char> h(n);
  check(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  std::ofstream out(path, std::ios::binary);
  out.write(h.data(), static_cast<std::streamsize>(n));
  if (!out) die("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) die("usage: aot_sm90_gpu DIR");
  const std::string dir = argv[1];
  auto kv = read_args(dir);
  const fc::SegmentLseSm90AotKernels& k = fc::kSegmentLseSm90AotSets[0];
  fc::SegmentLseArgs a;
  a.dtype = k.dtype;
  a.B = geti(kv, "B");
  a.N = geti(kv, "N");
  a.D = geti(kv, "D");
  a.S = geti(kv, "S");
  a.ldx = a.D;
  a.ldb = a.D;
  const std::vector<char> offsets = read_file(dir + "/offsets.bin");
  a.x = upload(read_file(dir + "/x.bin"));
  a.bank = upload(read_file(dir + "/bank.bin"));
  a.offsets = static_cast<const int64_t*>(upload(offsets));
  a.row_scale = static_cast<const float*>(upload(read_file(dir + "/scale.bin")));
  const std::size_t lse_bytes = static_cast<std::size_t>(a.B * a.S) * 4;
  check(cudaMalloc(reinterpret_cast<void**>(&a.lse), lse_bytes), "cudaMalloc lse");
  check(cudaMalloc(reinterpret_cast<void**>(&a.max0), static_cast<std::size_t>(a.B) * 4), "cudaMalloc max0");
  const bool argmax = geti(kv, "argmax") != 0;
  if (argmax) check(cudaMalloc(reinterpret_cast<void**>(&a.argmax0), static_cast<std::size_t>(a.B) * 8), "cudaMalloc");
  // programs: the hot kernel's stream-K grid (the launcher's num_programs), splits: segment 0's.
  const fc::Sm90Plan plan = fc::sm90_plan(geti(kv, "programs"), geti(kv, "splits"));
  const fc::Sm90WsLayout w = fc::sm90_workspace_layout(plan, a.B, a.N, k.block_b);
  check(cudaMalloc(&a.workspace, static_cast<std::size_t>(w.total)), "cudaMalloc workspace");
  a.workspace_bytes = w.total;
  std::string path;
  const std::string err = fc::segment_lse_sm90_aot(a, k, plan, &path);
  if (!err.empty()) die(err, 3);
  check(cudaDeviceSynchronize(), "the sm90 kernels");
  std::printf("path %s\n", path.c_str());
  std::printf("plan %" PRId64 " %" PRId64 "\n", plan.programs, plan.splits0);
  download(dir + "/lse.bin", a.lse, lse_bytes);
  download(dir + "/max0.bin", a.max0, static_cast<std::size_t>(a.B) * 4);
  if (argmax) download(dir + "/argmax0.bin", a.argmax0, static_cast<std::size_t>(a.B) * 8);
  return 0;
}

// TEST ONLY — runs segment_lse_aot (csrc/cuda/segment_lse_aot.cpp) with a recording stand-in
// for aot::launch, on the CPU emulator (the split-starts kernel really runs, emulated), and
// prints every launch: which image, the grid, and each packed parameter. tests/test_cuda_emulator.py
// compares this with the arguments fastood/ops/_triton_segment_lse.py passes to the same
// Triton kernels.
//
//   aot_driver DIR    reads DIR/args.txt (dtype B N D S ldx ldb splits argmax) and offsets.bin;
//                     the images come from "aot_images.h" (written by the test): fwd_sa (the
//                     split + argmax forward kernel) and merge_a (the argmax merge kernel).
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "aot_images.h"
#include "cuda/segment_lse_aot.h"
#include "emu_io.h"

namespace fc = fastood::cuda;
namespace aot = fastood::cuda::aot;
using namespace emu_io;

namespace {

// Distinct image objects per variant (same cubin), so the launch record says which one ran.
aot::TritonKernelImage g_fwd[2][2] = {{aot::fwd_sa, aot::fwd_sa}, {aot::fwd_sa, aot::fwd_sa}};
aot::TritonKernelImage g_merge[2] = {aot::merge_a, aot::merge_a};

std::string which(const aot::TritonKernelImage* k) {
  for (int s = 0; s < 2; ++s)
    for (int g = 0; g < 2; ++g)
      if (k == &g_fwd[s][g]) return "fwd" + std::to_string(s) + std::to_string(g);
  for (int g = 0; g < 2; ++g)
    if (k == &g_merge[g]) return "merge" + std::to_string(g);
  return "?";
}

}  // namespace

namespace fastood {
namespace cuda {
namespace aot {
// The recording stand-in: pack exactly as the real launcher does, then print.
std::string launch(const TritonKernelImage& k, unsigned gx, unsigned gy, unsigned gz, const std::vector<TritonArg>& args,
                   void* global_scratch, void*) {
  PackedParams p;
  const std::string why = pack_params(k, args, global_scratch, nullptr, &p);
  if (!why.empty()) return why;
  std::printf("launch %s %u %u %u\n", which(&k).c_str(), gx, gy, gz);
  for (int i = 0; i < k.num_params; ++i) {
    uint64_t v = 0;
    std::memcpy(&v, p.pointers[static_cast<std::size_t>(i)], param_bytes(k.params[i].kind));
    std::printf("arg %d %s %" PRIu64 "\n", i, param_kind_name(k.params[i].kind), v);
  }
  return std::string();
}
// segment_lse_aot.cpp's sm90 sequence needs these too; the portable path never calls them
// (tests/test_triton_aot_tma.py records them with csrc/cuda/testing/aot_sm90_driver.cpp).
std::string encode_tensor_map(const TritonTensorDesc&, const TensorDescArg&, TensorMap*) {
  return "aot_driver: no tensor maps";
}
std::string memset_d32(void*, uint32_t, std::size_t, void*) { return "aot_driver: no fills"; }
}  // namespace aot
}  // namespace cuda
}  // namespace fastood

int main(int argc, char** argv) {
  if (argc != 2) die("usage: aot_driver DIR");
  const std::string dir = argv[1];
  auto kv = read_args(dir);
  fc::SegmentLseAotKernels k;
  k.arch = 90;
  k.dtype = fc::DType::kFloat16;
  k.block_b = static_cast<int>(geti(kv, "block_b"));
  k.merge_block = static_cast<int>(geti(kv, "merge_block"));
  for (int s = 0; s < 2; ++s)
    for (int g = 0; g < 2; ++g) k.fwd[s][g] = &g_fwd[s][g];
  k.merge[0] = &g_merge[0];
  k.merge[1] = &g_merge[1];

  fc::SegmentLseArgs a;
  a.dtype = fc::DType::kFloat16;
  a.B = geti(kv, "B");
  a.N = geti(kv, "N");
  a.D = geti(kv, "D");
  a.S = geti(kv, "S");
  a.ldx = geti(kv, "ldx");
  a.ldb = geti(kv, "ldb");
  // Fake device addresses for what only the (stubbed) Triton kernels would touch.
  a.x = reinterpret_cast<const void*>(uintptr_t{0x10000});
  a.bank = reinterpret_cast<const void*>(uintptr_t{0x20000});
  a.row_scale = reinterpret_cast<const float*>(uintptr_t{0x30000});
  a.lse = reinterpret_cast<float*>(uintptr_t{0x40000});
  a.max0 = reinterpret_cast<float*>(uintptr_t{0x50000});
  a.argmax0 = geti(kv, "argmax") ? reinterpret_cast<int64_t*>(uintptr_t{0x60000}) : nullptr;
  Operand off(dir + "/offsets.bin");
  a.offsets = reinterpret_cast<const int64_t*>(off.base);
  a.plan = fc::plan_splits(a.B, a.N, a.S, 132, 3, geti(kv, "splits"), fc::kDefaultSplitWorkspaceBytes);
  Buffer ws(static_cast<std::size_t>(a.plan.workspace_bytes));
  a.workspace = ws.ptr;
  a.workspace_bytes = a.plan.workspace_bytes;
  std::printf("plan %" PRId64 " %" PRId64 "\n", a.plan.splits, a.plan.chunk);
  std::printf("addr offsets %" PRIu64 "\n", static_cast<uint64_t>(reinterpret_cast<uintptr_t>(off.base)));
  std::printf("addr workspace %" PRIu64 "\n", static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ws.ptr)));
  const std::string err = fc::segment_lse_aot(a, k);
  if (!err.empty()) die(err, 3);
  if (a.plan.workspace_bytes > 0) {
    // The split-starts table the emulated kernel wrote (the Triton launcher's searchsorted).
    const int64_t chunk = (a.N + a.plan.splits - 1) / a.plan.splits;
    const int64_t chunk_t = (chunk + 127) / 128 * 128;
    const int64_t splits_t = (a.N + chunk_t - 1) / chunk_t;
    if (splits_t > 1) {
      const fc::WsLayout w = fc::split_workspace_layout(splits_t, a.S, a.B);
      const int32_t* st = reinterpret_cast<const int32_t*>(static_cast<char*>(ws.ptr) + w.starts_off);
      std::printf("starts");
      for (int64_t p = 0; p < splits_t; ++p) std::printf(" %d", st[p]);
      std::printf("\n");
    }
  }
  return 0;
}

// TEST ONLY — runs segment_lse_sm90_aot (csrc/cuda/segment_lse_aot.cpp) over the real sm_90
// images (embed_triton.py --sm90-registry → "aot_sm90_kernels.h") with recording stand-ins
// for the three driver-facing calls of triton_aot.h, on the CPU emulator (the colseg /
// split-starts kernel really runs, emulated). It prints:
//   memset ADDR BITS COUNT                  aot::memset_d32
//   encode ARG TYPE RANK ADDR DIMS.. STRIDES.. BOX.. ESTR.. INTERLEAVE SWIZZLE L2 OOB SMALL
//                                           the cuTensorMapEncodeTiled arguments (tma_encode_args)
//   launch SLOT GX GY GZ, then per packed parameter
//   arg I NAME KIND OFFSET SIZE VALUE       OFFSET: its place in the parameter buffer laid out
//                                           by PTX rules (align, size); VALUE: the integer, or
//                                           for a tensor map the number of the encode it came from
//   path tma | path ptr: REASON,  colseg V.., ws OFFSET (the workspace's address)
// tests/test_cuda_emulator.py compares it with what fastood/ops/_triton_segment_lse_sm90.py's
// launcher passes to the same Triton kernels and with Triton's own descriptor encoding.
//
//   aot_sm90_driver DIR   DIR/args.txt: B N D S ldx ldb programs splits argmax x_addr bank_addr
//                         (programs: the hot kernel's stream-K grid, splits: segment 0's; fake
//                         device addresses of the operands); DIR/offsets.bin
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "aot_sm90_kernels.h"
#include "cuda/segment_lse_aot.h"
#include "emu_io.h"

namespace fc = fastood::cuda;
namespace aot = fastood::cuda::aot;
using namespace emu_io;

namespace {

const fc::SegmentLseSm90AotKernels& set() { return fc::kSegmentLseSm90AotSets[0]; }
int g_encodes = 0;

std::string slot(const aot::TritonKernelImage* k) {
  const auto& s = set();
  for (int t = 0; t < 2; ++t)
    for (int v = 0; v < 2; ++v) {
      if (v == 0 && k == s.hot[t]) return "hot" + std::to_string(t);
      for (int p = 0; p < 2; ++p)
        if (k == s.seg0[t][v][p]) return "seg0" + std::to_string(t) + std::to_string(v) + std::to_string(p);
    }
  for (int v = 0; v < 2; ++v) {
    if (k == s.exact[v]) return "exact" + std::to_string(v);
    if (k == s.seg0_merge[v]) return "seg0_merge" + std::to_string(v);
  }
  return "?";
}

}  // namespace

namespace fastood {
namespace cuda {
namespace aot {

std::string launch(const TritonKernelImage& k, unsigned gx, unsigned gy, unsigned gz, const std::vector<TritonArg>& args,
                   void* global_scratch, void*) {
  PackedParams p;
  const std::string why = pack_params(k, args, global_scratch, nullptr, &p);
  if (!why.empty()) return why;
  std::printf("launch %s %u %u %u\n", slot(&k).c_str(), gx, gy, gz);
  std::size_t off = 0;
  for (int i = 0; i < k.num_params; ++i) {
    const ParamKind kind = k.params[i].kind;
    const std::size_t size = param_bytes(kind), al = param_align(kind);
    off = (off + al - 1) / al * al;
    uint64_t v = 0;
    std::memcpy(&v, p.pointers[static_cast<std::size_t>(i)], size < 8 ? size : 8);
    if (kind == ParamKind::kDescShape) v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
    std::printf("arg %d %s %s %zu %zu %" PRId64 "\n", i, k.params[i].name, param_kind_name(kind), off, size,
                static_cast<int64_t>(v));
    off += size;
  }
  return std::string();
}

std::string encode_tensor_map(const TritonTensorDesc& desc, const TensorDescArg& a, TensorMap* out) {
  TmaEncodeArgs e;
  const std::string why = tma_encode_args(desc, a, &e);
  if (!why.empty()) return why;
  // A stand-in for a driver that refuses (tests/test_triton_aot_tma.py: the fallback).
  if (e.address == 0x0DEAD000u) return "cuTensorMapEncodeTiled refused (recording driver)";
  std::printf("encode %s %d %u %" PRIu64, desc.arg, e.data_type, e.rank, e.address);
  for (uint32_t i = 0; i < e.rank; ++i) std::printf(" %" PRIu64, e.global_dim[i]);
  for (uint32_t i = 0; i < e.rank; ++i) std::printf(" %" PRIu64, e.global_strides[i]);
  for (uint32_t i = 0; i < e.rank; ++i) std::printf(" %u", e.box_dim[i]);
  for (uint32_t i = 0; i < e.rank; ++i) std::printf(" %u", e.element_strides[i]);
  std::printf(" %d %d %d %d %d\n", e.interleave, e.swizzle, e.l2_promotion, e.oob_fill, e.small_tensor ? 1 : 0);
  std::memset(out->bytes, 0, sizeof(out->bytes));
  const uint64_t tag = static_cast<uint64_t>(++g_encodes);  // which encode the kernel received
  std::memcpy(out->bytes, &tag, 8);
  out->src = a;
  return std::string();
}

std::string memset_d32(void* dst, uint32_t value, std::size_t count, void*) {
  std::printf("memset %" PRIu64 " %u %zu\n", static_cast<uint64_t>(reinterpret_cast<uintptr_t>(dst)), value, count);
  return std::string();
}

}  // namespace aot
}  // namespace cuda
}  // namespace fastood

int main(int argc, char** argv) {
  if (argc != 2) die("usage: aot_sm90_driver DIR");
  const std::string dir = argv[1];
  auto kv = read_args(dir);
  fc::SegmentLseArgs a;
  a.dtype = set().dtype;
  a.B = geti(kv, "B");
  a.N = geti(kv, "N");
  a.D = geti(kv, "D");
  a.S = geti(kv, "S");
  a.ldx = geti(kv, "ldx");
  a.ldb = geti(kv, "ldb");
  a.x = reinterpret_cast<const void*>(static_cast<uintptr_t>(geti(kv, "x_addr")));
  a.bank = reinterpret_cast<const void*>(static_cast<uintptr_t>(geti(kv, "bank_addr")));
  a.row_scale = reinterpret_cast<const float*>(uintptr_t{0x30000});
  a.lse = reinterpret_cast<float*>(uintptr_t{0x40000});
  a.max0 = reinterpret_cast<float*>(uintptr_t{0x50000});
  a.argmax0 = geti(kv, "argmax") ? reinterpret_cast<int64_t*>(uintptr_t{0x60000}) : nullptr;
  Operand off(dir + "/offsets.bin");
  a.offsets = reinterpret_cast<const int64_t*>(off.base);
  // The launcher's num_programs (the hot kernel's grid) and num_splits (segment 0's), forced.
  const fc::Sm90Plan plan = fc::sm90_plan(geti(kv, "programs"), geti(kv, "splits"));
  const fc::Sm90WsLayout w = fc::sm90_workspace_layout(plan, a.B, a.N, set().block_b);
  Buffer ws(static_cast<std::size_t>(w.total));
  a.workspace = ws.ptr;
  a.workspace_bytes = w.total;
  std::printf("addr offsets %" PRIu64 "\n", static_cast<uint64_t>(reinterpret_cast<uintptr_t>(off.base)));
  std::printf("addr workspace %" PRIu64 "\n", static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ws.ptr)));
  std::printf("plan %" PRId64 " %" PRId64 "\n", plan.programs, plan.splits0);
  std::string path;
  const std::string err = fc::segment_lse_sm90_aot(a, set(), plan, &path);
  if (!err.empty()) die(err, 3);
  std::printf("path %s\n", path.c_str());
  const int32_t* cs = reinterpret_cast<const int32_t*>(static_cast<char*>(ws.ptr) + w.colseg_off);
  std::printf("colseg");
  for (int64_t j = 0; j < a.N; ++j) std::printf(" %d", cs[j]);
  std::printf("\n");
  return 0;
}

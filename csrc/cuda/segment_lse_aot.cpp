// segment_lse on the AOT-compiled Triton kernels (segment_lse_aot.h).
#include "cuda/segment_lse_aot.h"

#include <cstdint>
#include <string>
#include <vector>

namespace fastood {
namespace cuda {
namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned(const void* p, int64_t ld, int64_t D) {
  // The images were compiled with tt.divisibility 16 on every pointer, D, the row
  // strides and chunk: 16-byte-aligned bases, multiples of 16 elements.
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % 16 == 0 && D % 16 == 0;
}

}  // namespace

std::string segment_lse_aot_applicable(const SegmentLseArgs& a, const SegmentLseAotKernels& k) {
  if (a.dtype != k.dtype) return "dtype differs from the compiled kernels'";
  if (k.block_b < 1 || k.merge_block < 1 || k.chunk_align < 16 || k.chunk_align % 16 != 0)
    return "incomplete kernel set";
  for (int s = 0; s < 2; ++s)
    for (int g = 0; g < 2; ++g)
      if (k.fwd[s][g] == nullptr) return "incomplete kernel set";
  if (k.merge[0] == nullptr || k.merge[1] == nullptr) return "incomplete kernel set";
  if (!aligned(a.x, a.ldx, a.D) || !aligned(a.bank, a.ldb, a.D))
    return "operands not 16-aligned (base, row stride or D)";
  const int64_t i32max = (int64_t{1} << 31) - 1;
  if (a.B > i32max || a.N > i32max || a.D > i32max || a.S > i32max || a.ldx > i32max || a.ldb > i32max)
    return "sizes beyond the kernel's int32 arguments";
  if (cdiv(a.B, k.merge_block) > 65535) return "too many rows for the merge grid's y dimension";
  return std::string();
}

std::string segment_lse_aot(const SegmentLseArgs& a, const SegmentLseAotKernels& k) {
  std::string why = segment_lse_aot_applicable(a, k);
  if (!why.empty()) return "segment_lse_aot: " + why;
  if (a.plan.splits < 1) return "segment_lse_aot: invalid split plan";
  // The Triton launcher: chunk = cdiv(cdiv(N, splits), align)·align, splits = cdiv(N, chunk).
  const int64_t chunk = cdiv(cdiv(a.N, a.plan.splits), k.chunk_align) * k.chunk_align;
  const int64_t splits = cdiv(a.N, chunk);
  const bool split = splits > 1;
  const bool argmax = a.argmax0 != nullptr;
  using aot::TritonArg;

  const void* starts = a.lse;  // unused unless split (SPLIT is a constexpr): any valid pointer
  const void* ws_m = a.lse;
  const void* ws_l = a.lse;
  const void* ws_arg = a.lse;
  if (split) {
    const WsLayout w = split_workspace_layout(splits, a.S, a.B);
    if (a.workspace == nullptr || a.workspace_bytes < w.total) return "segment_lse_aot: the split workspace is too small";
    char* base = static_cast<char*>(a.workspace);
    ws_m = base + w.m_off;
    ws_l = base + w.l_off;
    ws_arg = argmax ? static_cast<const void*>(base + w.arg_off) : ws_m;
    starts = base + w.starts_off;
    why = launch_split_starts(a.offsets, a.S, chunk, splits, static_cast<int32_t*>(const_cast<void*>(starts)), a.stream);
    if (!why.empty()) return why;
  }
  const void* arg0 = argmax ? static_cast<const void*>(a.argmax0) : a.max0;  // never written without argmax
  const std::vector<TritonArg> fwd_args = {
      TritonArg::ptr(a.x), TritonArg::ptr(a.bank), TritonArg::ptr(a.offsets), TritonArg::ptr(a.row_scale),
      TritonArg::ptr(starts), TritonArg::ptr(a.lse), TritonArg::ptr(a.max0), TritonArg::ptr(arg0),
      TritonArg::ptr(ws_m), TritonArg::ptr(ws_l), TritonArg::ptr(ws_arg),
      TritonArg::i32(static_cast<int32_t>(a.B)), TritonArg::i32(static_cast<int32_t>(a.N)),
      TritonArg::i32(static_cast<int32_t>(a.D)), TritonArg::i32(static_cast<int32_t>(a.S)),
      TritonArg::i32(static_cast<int32_t>(chunk)), TritonArg::i32(static_cast<int32_t>(a.ldx)),
      TritonArg::i32(static_cast<int32_t>(a.ldb))};
  why = aot::launch(*k.fwd[split][argmax], static_cast<unsigned>(cdiv(a.B, k.block_b)), static_cast<unsigned>(splits),
                    1, fwd_args, nullptr, a.stream);
  if (!why.empty()) return "segment_lse_aot: " + why;
  if (split) {
    const std::vector<TritonArg> merge_args = {
        TritonArg::ptr(ws_m), TritonArg::ptr(ws_l), TritonArg::ptr(ws_arg), TritonArg::ptr(a.offsets),
        TritonArg::ptr(a.lse), TritonArg::ptr(a.max0), TritonArg::ptr(arg0),
        TritonArg::i32(static_cast<int32_t>(a.B)), TritonArg::i32(static_cast<int32_t>(a.S)),
        TritonArg::i32(static_cast<int32_t>(chunk))};
    why = aot::launch(*k.merge[argmax], static_cast<unsigned>(a.S), static_cast<unsigned>(cdiv(a.B, k.merge_block)), 1,
                      merge_args, nullptr, a.stream);
    if (!why.empty()) return "segment_lse_aot: " + why;
  }
  return std::string();
}

}  // namespace cuda
}  // namespace fastood

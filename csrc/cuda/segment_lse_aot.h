// segment_lse on the Triton kernel compiled ahead of time (embed_triton.py → triton_aot.h).
//
// The host side of fastood/ops/_triton_segment_lse.py's launcher, in C++: the same
// arguments in the same order, the same column chunk (a multiple of 128), the same grid,
// the same split workspace layout as the CUDA C++ kernel's (so head.cu's and the
// plugin's workspace sizes hold), the first-segment table of each split
// (launch_split_starts: torch.searchsorted) and the Triton merge kernel. Plain C++17: the
// device work is in the kernels it launches.
#pragma once

#include <string>

#include "cuda/fastood_cuda.cuh"
#include "cuda/triton_aot.h"

namespace fastood {
namespace cuda {

// One Triton configuration compiled for one target and dtype: the forward kernel in its
// four (split, argmax) variants and the merge kernel in its two argmax variants.
struct SegmentLseAotKernels {
  int arch = 0;
  DType dtype = DType::kFloat16;
  int block_b = 0;      // BLOCK_B of the forward images (rows per program)
  int chunk_align = 128;  // a split's columns are a multiple of this (the launcher's _CUDA_CHUNK_ALIGN)
  int merge_block = 0;  // BLOCK of the merge images
  const aot::TritonKernelImage* fwd[2][2] = {{nullptr, nullptr}, {nullptr, nullptr}};  // [split][argmax]
  const aot::TritonKernelImage* merge[2] = {nullptr, nullptr};                         // [argmax]
};

// "" when `a` can run on `k` (its dtype, 16-byte-aligned bases, row strides and D
// multiples of 16 elements — the specialisation the images were compiled with — sizes
// within int32), else the reason (the caller then runs the CUDA C++ kernel).
std::string segment_lse_aot_applicable(const SegmentLseArgs& a, const SegmentLseAotKernels& k);

// Enqueue `a` on the AOT Triton kernels. a.plan.splits is kept as the number of splits
// the launcher asks for (the Triton launcher's num_splits); the chunk is re-rounded to
// k.chunk_align, which can only lower the split count, so a.workspace (sized by
// plan_splits) is large enough. "" on success.
std::string segment_lse_aot(const SegmentLseArgs& a, const SegmentLseAotKernels& k);

// ---- The Hopper kernels (fastood/ops/_triton_segment_lse_sm90.py), TMA path included ----
//
// The launch sequence of segment_lse_triton_sm90 (the Python launcher), in C++:
//   fills: lse = −inf (B·S), max0 = −inf (B), argmax0 = 0 (B, when wanted) — the offsets are
//          on the device, so empty segments (never visited by a kernel) may exist; nothing
//          else: flag, bflag, part_seg and part_v are written by the hot kernel before the
//          exact kernel reads them (its docstring), so the workspace needs no fill;
//   colseg[j] = searchsorted(offsets[1:], j, right=True) (launch_split_starts, chunk 1);
//   hot kernel            grid (P)                      [tma]: stream-K, program q walks the
//                         (row block, tile) units [⌊qU/P⌋, ⌊(q+1)U/P⌋) of columns [end0, N),
//                         U = ⌈B/BLOCK_B⌉·⌈(N − end0)/BLOCK_N⌉ (end0 on the device: programs
//                         past U get empty ranges)
//   segment-0 kernel      grid (⌈B/BLOCK_B⌉, splits0)   [tma][argmax][split0]: split p takes
//                         segment 0's column tiles p, p + splits0, … (end0 stays on the device)
//   segment-0 merge       grid (⌈B/merge_block⌉)        [argmax], when split0
//   exact kernel          grid (⌈B/BLOCK_B⌉)            [argmax], pointer operands: recomputes
//                         the marked row blocks, merges the segments the pieces cut
// No split merge for the hot kernel (its pieces' partials meet in the exact kernel).
// TMA: x and bank become CUtensorMaps (aot::encode_tensor_map, Triton's own encoding)
// when both can (16-byte-aligned bases and row strides, unit inner stride); otherwise, or
// when encoding fails (no cuTensorMapEncodeTiled in the driver), the pointer variants run
// (on the same grid P: stream-K is correct for any P).
// Arguments are passed by name (the Triton signature's), so the images' parameter order
// comes from the compiled kernels, not from this file.
struct SegmentLseSm90AotKernels {
  int arch = 0;
  DType dtype = DType::kFloat16;
  int block_b = 0, block_n = 0, block_d = 0;  // the hot / segment-0 tile (their constexprs); the
                                              // exact kernel's BLOCK_B and HOT_BLOCK_N equal them
  int merge_block = 0;                        // BLOCK of the segment-0 merge kernel
  const aot::TritonKernelImage* hot[2] = {};           // [tma]
  const aot::TritonKernelImage* seg0[2][2][2] = {};    // [tma][argmax][split]
  const aot::TritonKernelImage* seg0_merge[2] = {};    // [argmax]
  const aot::TritonKernelImage* exact[2] = {};         // [argmax]
};

// The sequence's shape: the hot kernel's stream-K programs P, segment 0's column splits.
struct Sm90Plan {
  int64_t programs = 1;  // hot kernel: its 1-D grid
  int64_t splits0 = 1;   // segment-0 kernel (its n_splits)
};
// A plan from requests (each < 1 counts as 1): P as asked (num_programs: programs past the
// units exit, as in the launcher); segment 0 takes its request as is (programs past its
// last tile exit).
Sm90Plan sm90_plan(int64_t programs, int64_t splits0);

// The launcher's default grid for the hot kernel (stream_k_programs, split_plan.h): two
// programs per SM (the capped TMA path's resident blocks), at most one per unit, over
// ⌈B/block_b⌉ row blocks × ⌈N/block_n⌉ tiles (end0 is on the device: its bound N).
int64_t sm90_choose_programs(int64_t B, int64_t N, int sm_count, int64_t block_b, int64_t block_n);

// The launcher's segment-0 split rule (_segment0_splits without end0 on the host: sol_splits
// with S = 1 on all N columns): the wave-aware count of split_plan.h for two resident blocks
// per SM, 1 when the row blocks alone fill them, at least one tile per split, within a 64 MB
// workspace (B·S·8 bytes per split).
int64_t sm90_choose_splits(int64_t B, int64_t cols, int64_t S, int sm_count, int64_t block_b, int64_t block_n);

// Workspace of the sm90 sequence (each region 256-byte aligned): colseg (N int32), flag
// (⌈B/block_b⌉ int32: a row block's leading piece marked it), bflag (P + 1 int32: the piece
// starting at boundary b marked its row block), part_seg (2(P + 1) int32: the segment cut
// before / after each boundary), part_v (2(P + 1) × block_b fp32: their partial lse); with
// splits0 > 1 segment 0's partial m, l (splits0, B) fp32 and argmax (splits0, B) int32.
struct Sm90WsLayout {
  int64_t colseg_off = 0, flag_off = 0, bflag_off = 0, part_seg_off = 0, part_v_off = 0, m0_off = 0, l0_off = 0,
          arg0_off = 0, total = 0;
};
Sm90WsLayout sm90_workspace_layout(const Sm90Plan& p, int64_t B, int64_t N, int64_t block_b);

// True when TMA can take an operand (the launcher's _tma_ok): 16-byte-aligned base, row
// stride a multiple of 16 bytes, a row of at least 16 bytes.
bool sm90_tma_ok(const void* base, int64_t ld, int64_t D, int64_t elem_size);

// "" when `a` can run on `k` (dtype, complete set, the images' 16-alignment, sizes within
// int32, fewer than 2^31 hot tiles, N within the colseg kernel's grid), else the reason.
std::string segment_lse_sm90_aot_applicable(const SegmentLseArgs& a, const SegmentLseSm90AotKernels& k);

// Enqueue `a` on the sm90 images with plan `p` (sm90_plan); no host sync. a.plan is not
// used; a.workspace must hold sm90_workspace_layout(p, ...).total bytes. *path (if given)
// is set to "tma" or "ptr: <reason>". "" on success.
std::string segment_lse_sm90_aot(const SegmentLseArgs& a, const SegmentLseSm90AotKernels& k, const Sm90Plan& p,
                                 std::string* path = nullptr);

// The embedded kernel set for the current device's sm_XX and `dtype`, or nullptr (with the
// reason in *why): none embedded for it, no device, or FASTOOD_CUDA_KERNEL=wmma.
// Defined by segment_lse_aot_registry.cpp in builds with FASTOOD_TRITON_AOT=ON.
const SegmentLseAotKernels* aot_kernels_for(DType dtype, std::string* why = nullptr);

// Every sm90 kernel set this build embeds, whatever the device (workspace bounds that must
// not depend on the GPU: head_workspace_bytes): sm90_aot_set(i) for i < sm90_aot_set_count().
// Defined by segment_lse_aot_registry.cpp in builds with FASTOOD_TRITON_AOT=ON.
int sm90_aot_set_count();
const SegmentLseSm90AotKernels* sm90_aot_set(int i);

// The embedded sm90 (Hopper, TMA) kernel set for the current device and `dtype`, or nullptr
// (reason in *why; FASTOOD_TRITON_SM90=0 and FASTOOD_CUDA_KERNEL=wmma refuse it).
// Defined by segment_lse_aot_registry.cpp in builds with FASTOOD_TRITON_AOT=ON.
const SegmentLseSm90AotKernels* sm90_aot_kernels_for(DType dtype, std::string* why = nullptr);

}  // namespace cuda
}  // namespace fastood

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
//   fills: lse = −inf (B·S), max0 = −inf (B), argmax0 = 0 (B, when wanted), flag = 0 (row
//          blocks); with splits ws_m[:, 0] = −inf and ws_l[:, 0] = 0 (segment 0 is not the
//          hot kernel's);
//   colseg[j] = searchsorted(offsets[1:], j, right=True) (launch_split_starts, chunk 1);
//   hot kernel            grid (⌈B/BLOCK_B⌉, splits)    [tma][split]
//   merge (split)         grid (S, ⌈B/merge_block⌉)     the portable module's, argmax off
//   segment-0 kernel      grid (⌈B/BLOCK_B⌉, splits0)   [tma][argmax][split0]: split p takes
//                         segment 0's column tiles p, p + splits0, … (end0 stays on the device)
//   segment-0 merge       grid (⌈B/merge_block⌉)        [argmax], when split0
//   exact kernel          grid (⌈B/BLOCK_B⌉)            [argmax], pointer operands
// TMA: x and bank become CUtensorMaps (aot::encode_tensor_map, Triton's own encoding)
// when both can (16-byte-aligned bases and row strides, unit inner stride); otherwise, or
// when encoding fails (no cuTensorMapEncodeTiled in the driver), the pointer variants run.
// Arguments are passed by name (the Triton signature's), so the images' parameter order
// comes from the compiled kernels, not from this file.
struct SegmentLseSm90AotKernels {
  int arch = 0;
  DType dtype = DType::kFloat16;
  int block_b = 0, block_n = 0, block_d = 0;  // the hot / segment-0 tile (their constexprs)
  int merge_block = 0;                        // BLOCK of both merge kernels
  const aot::TritonKernelImage* hot[2][2] = {};        // [tma][split]
  const aot::TritonKernelImage* seg0[2][2][2] = {};    // [tma][argmax][split]
  const aot::TritonKernelImage* seg0_merge[2] = {};    // [argmax]
  const aot::TritonKernelImage* exact[2] = {};         // [argmax]
  const aot::TritonKernelImage* merge[2] = {};         // [argmax] (the sequence uses [0])
};

// How the sequence splits: the hot kernel's columns, and segment 0's column tiles (strided).
struct Sm90Plan {
  int64_t chunk = 0, splits = 1;  // hot kernel (chunk a multiple of BLOCK_N)
  int64_t splits0 = 1;            // segment-0 kernel (its n_splits)
};
// The launcher's rounding: chunk = ⌈⌈N/requested⌉/BLOCK_N⌉·BLOCK_N, splits = ⌈N/chunk⌉;
// segment 0 takes its request as is (programs past segment 0's last tile exit).
Sm90Plan sm90_plan(int64_t N, int64_t requested_splits, int64_t requested_splits0, int64_t block_n);

// The launcher's split rule (sol_splits / _choose_splits_sm90): the wave-aware count of
// split_plan.h (fastood/ops/_split_plan.py) for two resident blocks per SM, 1 when the row
// blocks alone fill them, at least one tile per split, and a workspace (m and l per split,
// segment and row) of at most 64 MB. The segment-0 kernel's request is the same rule with
// S = 1 on all N columns (_segment0_splits without end0 on the host: offsets on the device).
int64_t sm90_choose_splits(int64_t B, int64_t cols, int64_t S, int sm_count, int64_t block_b, int64_t block_n);

// Workspace of the sm90 sequence (each region 256-byte aligned): colseg (N int32), the
// row-block flags (⌈B/block_b⌉ int32); with splits > 1 the partial m and l, both
// (splits, S, B) fp32; with splits0 > 1 segment 0's partial m, l (splits0, B) fp32 and
// argmax (splits0, B) int32.
struct Sm90WsLayout {
  int64_t colseg_off = 0, flag_off = 0, m_off = 0, l_off = 0, m0_off = 0, l0_off = 0, arg0_off = 0, total = 0;
};
Sm90WsLayout sm90_workspace_layout(const Sm90Plan& p, int64_t S, int64_t B, int64_t N, int64_t block_b);

// True when TMA can take an operand (the launcher's _tma_ok): 16-byte-aligned base, row
// stride a multiple of 16 bytes, a row of at least 16 bytes.
bool sm90_tma_ok(const void* base, int64_t ld, int64_t D, int64_t elem_size);

// "" when `a` can run on `k` (dtype, complete set, the images' 16-alignment, sizes within
// int32, N within the colseg kernel's grid), else the reason.
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

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

// The embedded kernel set for the current device's sm_XX and `dtype`, or nullptr (with the
// reason in *why): none embedded for it, no device, or FASTOOD_CUDA_KERNEL=wmma.
// Defined by segment_lse_aot_registry.cpp in builds with FASTOOD_TRITON_AOT=ON.
const SegmentLseAotKernels* aot_kernels_for(DType dtype, std::string* why = nullptr);

}  // namespace cuda
}  // namespace fastood

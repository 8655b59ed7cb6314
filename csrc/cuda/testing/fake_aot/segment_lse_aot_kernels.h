// TEST ONLY — stand-in for the header embed_triton.py --registry generates: portable sm_90
// kernel sets for fp16 and bf16 without cubins (aot_sm90_model.cpp records their launches and
// computes nothing: the dispatch tests read which path ran, not its numbers).
#pragma once

#include "cuda/segment_lse_aot.h"

namespace fastood {
namespace cuda {
namespace fake_aot {

inline const aot::TritonKernelImage kPortable{nullptr, 0, "portable", 90, 8, 0, 0, 1, 0, nullptr, 0, "", nullptr, 0};

inline SegmentLseAotKernels portable_set(DType dtype) {
  SegmentLseAotKernels k;
  k.arch = 90;
  k.dtype = dtype;
  k.block_b = 128;
  k.chunk_align = 128;
  k.merge_block = 128;
  for (int s = 0; s < 2; ++s)
    for (int g = 0; g < 2; ++g) k.fwd[s][g] = &kPortable;
  k.merge[0] = k.merge[1] = &kPortable;
  return k;
}

}  // namespace fake_aot

inline const SegmentLseAotKernels kSegmentLseAotSets[] = {fake_aot::portable_set(DType::kFloat16),
                                                           fake_aot::portable_set(DType::kBFloat16)};
inline constexpr int kSegmentLseAotSetCount = 2;

}  // namespace cuda
}  // namespace fastood

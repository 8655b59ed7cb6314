// TEST ONLY — stand-in for the header embed_triton.py --sm90-registry generates: sm_90 kernel
// sets for fp16 and bf16 whose images carry no cubin, only the parameter names and kinds of the
// Triton signatures (every name segment_lse_sm90_aot passes; the pack checks them by name) and
// the TMA images' descriptor metadata. aot_sm90_model.cpp runs a model of each kernel in their
// place, so segment_lse()'s dispatch, the head's workspace and the whole sm90 sequence run on
// the CPU emulator without Triton (tests/test_cuda_dispatch.py). The real images' parameter
// lists are checked against the Python launcher in tests/test_triton_aot_tma.py.
#pragma once

#include "cuda/segment_lse_aot.h"

namespace fastood {
namespace cuda {
namespace fake_aot {

using aot::ParamKind;
using aot::TritonKernelImage;
using aot::TritonParam;
using aot::TritonTensorDesc;

#define FASTOOD_FAKE_PARAMS(XK, BK)                                                                          \
  {{"x_ptr", XK}, {"bank_ptr", BK}, {"colseg_ptr", ParamKind::kPointer}, {"off_ptr", ParamKind::kPointer},   \
   {"scale_ptr", ParamKind::kPointer}, {"flag_ptr", ParamKind::kPointer}, {"lse_ptr", ParamKind::kPointer},  \
   {"max0_ptr", ParamKind::kPointer}, {"arg0_ptr", ParamKind::kPointer}, {"ws_m_ptr", ParamKind::kPointer},   \
   {"ws_l_ptr", ParamKind::kPointer}, {"ws_arg_ptr", ParamKind::kPointer}, {"B", ParamKind::kI32},            \
   {"N", ParamKind::kI32}, {"D", ParamKind::kI32}, {"S", ParamKind::kI32}, {"chunk", ParamKind::kI32},        \
   {"n_splits", ParamKind::kI32}, {"stride_xb", ParamKind::kI32}, {"stride_bn", ParamKind::kI32},           \
   {"global_scratch", ParamKind::kGlobalScratch}, {"profile_scratch", ParamKind::kProfileScratch}}

inline const TritonParam kPtrParams[] = FASTOOD_FAKE_PARAMS(ParamKind::kPointer, ParamKind::kPointer);
inline const TritonParam kTmaParams[] = FASTOOD_FAKE_PARAMS(ParamKind::kTensorMap, ParamKind::kTensorMap);
#undef FASTOOD_FAKE_PARAMS
constexpr int kNumParams = 22;

// 128 × 64 boxes (128-byte rows: within the 128-byte swizzle span); element type:
// CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, BFLOAT16 = 9.
inline const TritonTensorDesc kDescsF16[] = {{"x_ptr", 2, 3, 2, 6, {128, 64}}, {"bank_ptr", 2, 3, 2, 6, {128, 64}}};
inline const TritonTensorDesc kDescsBF16[] = {{"x_ptr", 2, 3, 2, 9, {128, 64}}, {"bank_ptr", 2, 3, 2, 9, {128, 64}}};

inline TritonKernelImage image(const char* name, bool tma, const TritonTensorDesc* descs) {
  TritonKernelImage k{nullptr, 0, name, 90, 8, 0, 0, 1, 0, tma ? kTmaParams : kPtrParams, kNumParams, "", nullptr, 0};
  if (tma) {
    k.descs = descs;
    k.num_descs = 2;
  }
  return k;
}

// One image object per slot (the model tells the kernels apart by address).
struct Images {
  TritonKernelImage hot[2][2], seg0[2][2][2], seg0_merge[2], exact[2], merge[2];
  explicit Images(const TritonTensorDesc* d) {
    for (int t = 0; t < 2; ++t)
      for (int s = 0; s < 2; ++s) {
        hot[t][s] = image("hot", t == 1, d);
        for (int g = 0; g < 2; ++g) seg0[t][g][s] = image("seg0", t == 1, d);
      }
    for (int g = 0; g < 2; ++g) {
      seg0_merge[g] = image("seg0_merge", false, d);
      exact[g] = image("exact", false, d);
      merge[g] = image("merge", false, d);
    }
  }
};
inline const Images kF16(kDescsF16), kBF16(kDescsBF16);

inline SegmentLseSm90AotKernels set_of(const Images& im, DType dtype) {
  SegmentLseSm90AotKernels k;
  k.arch = 90;
  k.dtype = dtype;
  k.block_b = 128;
  k.block_n = 128;
  k.block_d = 64;
  k.merge_block = 128;
  for (int t = 0; t < 2; ++t)
    for (int s = 0; s < 2; ++s) {
      k.hot[t][s] = &im.hot[t][s];
      for (int g = 0; g < 2; ++g) k.seg0[t][g][s] = &im.seg0[t][g][s];
    }
  for (int g = 0; g < 2; ++g) {
    k.seg0_merge[g] = &im.seg0_merge[g];
    k.exact[g] = &im.exact[g];
    k.merge[g] = &im.merge[g];
  }
  return k;
}

}  // namespace fake_aot

inline const SegmentLseSm90AotKernels kSegmentLseSm90AotSets[] = {
    fake_aot::set_of(fake_aot::kF16, DType::kFloat16), fake_aot::set_of(fake_aot::kBF16, DType::kBFloat16)};
inline constexpr int kSegmentLseSm90AotSetCount = 2;

}  // namespace cuda
}  // namespace fastood

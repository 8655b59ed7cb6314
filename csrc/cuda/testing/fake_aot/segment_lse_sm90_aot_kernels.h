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

// Each kind's parameters exactly as its Triton signature has them (aot_specs of
// fastood/ops/_triton_segment_lse_sm90.py, constexprs removed): pack_named refuses a launch
// that lacks one, so the stand-ins catch a forgotten argument as the real images would.
#define FASTOOD_SCRATCH {"global_scratch", ParamKind::kGlobalScratch}, {"profile_scratch", ParamKind::kProfileScratch}
#define FASTOOD_P(n) {n, ParamKind::kPointer}
#define FASTOOD_I(n) {n, ParamKind::kI32}
#define FASTOOD_HOT(XK)                                                                                       \
  {{"x_ptr", XK}, {"bank_ptr", XK}, FASTOOD_P("colseg_ptr"), FASTOOD_P("off_ptr"), FASTOOD_P("scale_ptr"),      \
   FASTOOD_P("flag_ptr"), FASTOOD_P("bflag_ptr"), FASTOOD_P("lse_ptr"), FASTOOD_P("part_v_ptr"),              \
   FASTOOD_P("part_seg_ptr"), FASTOOD_I("B"), FASTOOD_I("N"), FASTOOD_I("D"), FASTOOD_I("S"), FASTOOD_I("P"), \
   FASTOOD_I("stride_xb"), FASTOOD_I("stride_bn"), FASTOOD_SCRATCH}
#define FASTOOD_SEG0(XK)                                                                                       \
  {{"x_ptr", XK}, {"bank_ptr", XK}, FASTOOD_P("off_ptr"), FASTOOD_P("scale_ptr"), FASTOOD_P("lse_ptr"),        \
   FASTOOD_P("max0_ptr"), FASTOOD_P("arg0_ptr"), FASTOOD_P("ws_m_ptr"), FASTOOD_P("ws_l_ptr"),                \
   FASTOOD_P("ws_arg_ptr"), FASTOOD_I("B"), FASTOOD_I("N"), FASTOOD_I("D"), FASTOOD_I("S"),                   \
   FASTOOD_I("n_splits"), FASTOOD_I("stride_xb"), FASTOOD_I("stride_bn"), FASTOOD_SCRATCH}

inline const TritonParam kHotPtr[] = FASTOOD_HOT(ParamKind::kPointer);
inline const TritonParam kHotTma[] = FASTOOD_HOT(ParamKind::kTensorMap);
inline const TritonParam kSeg0Ptr[] = FASTOOD_SEG0(ParamKind::kPointer);
inline const TritonParam kSeg0Tma[] = FASTOOD_SEG0(ParamKind::kTensorMap);
inline const TritonParam kSeg0Merge[] = {
    FASTOOD_P("ws_m_ptr"), FASTOOD_P("ws_l_ptr"), FASTOOD_P("ws_arg_ptr"), FASTOOD_P("off_ptr"), FASTOOD_P("lse_ptr"),
    FASTOOD_P("max0_ptr"), FASTOOD_P("arg0_ptr"), FASTOOD_I("B"), FASTOOD_I("S"), FASTOOD_I("n_splits"),
    FASTOOD_SCRATCH};
inline const TritonParam kExact[] = {
    FASTOOD_P("x_ptr"), FASTOOD_P("bank_ptr"), FASTOOD_P("colseg_ptr"), FASTOOD_P("off_ptr"), FASTOOD_P("scale_ptr"),
    FASTOOD_P("flag_ptr"), FASTOOD_P("bflag_ptr"), FASTOOD_P("lse_ptr"), FASTOOD_P("max0_ptr"), FASTOOD_P("arg0_ptr"),
    FASTOOD_P("part_v_ptr"), FASTOOD_P("part_seg_ptr"), FASTOOD_I("B"), FASTOOD_I("N"), FASTOOD_I("D"),
    FASTOOD_I("S"), FASTOOD_I("P"), FASTOOD_I("stride_xb"), FASTOOD_I("stride_bn"), FASTOOD_SCRATCH};
#undef FASTOOD_HOT
#undef FASTOOD_SEG0
#undef FASTOOD_I
#undef FASTOOD_P
#undef FASTOOD_SCRATCH

template <std::size_t n>
constexpr int count(const TritonParam (&)[n]) {
  return static_cast<int>(n);
}

// 128 × 64 boxes (128-byte rows: within the 128-byte swizzle span); element type:
// CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, BFLOAT16 = 9.
inline const TritonTensorDesc kDescsF16[] = {{"x_ptr", 2, 3, 2, 6, {128, 64}}, {"bank_ptr", 2, 3, 2, 6, {128, 64}}};
inline const TritonTensorDesc kDescsBF16[] = {{"x_ptr", 2, 3, 2, 9, {128, 64}}, {"bank_ptr", 2, 3, 2, 9, {128, 64}}};

template <std::size_t n>
TritonKernelImage image(const char* name, const TritonParam (&params)[n], const TritonTensorDesc* descs) {
  const bool tma = params[0].kind == ParamKind::kTensorMap;
  TritonKernelImage k{nullptr, 0, name, 90, 8, 0, 0, 1, 0, params, count(params), "", nullptr, 0};
  if (tma) {
    k.descs = descs;
    k.num_descs = 2;
  }
  return k;
}

// One image object per slot (the model tells the kernels apart by address).
struct Images {
  TritonKernelImage hot[2], seg0[2][2][2], seg0_merge[2], exact[2];
  explicit Images(const TritonTensorDesc* d)
      : hot{image("hot", kHotPtr, d), image("hot", kHotTma, d)} {
    for (int t = 0; t < 2; ++t)
      for (int s = 0; s < 2; ++s)
        for (int g = 0; g < 2; ++g) seg0[t][g][s] = t ? image("seg0", kSeg0Tma, d) : image("seg0", kSeg0Ptr, d);
    for (int g = 0; g < 2; ++g) {
      seg0_merge[g] = image("seg0_merge", kSeg0Merge, d);
      exact[g] = image("exact", kExact, d);
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
  for (int t = 0; t < 2; ++t) {
    k.hot[t] = &im.hot[t];
    for (int s = 0; s < 2; ++s)
      for (int g = 0; g < 2; ++g) k.seg0[t][g][s] = &im.seg0[t][g][s];
  }
  for (int g = 0; g < 2; ++g) {
    k.seg0_merge[g] = &im.seg0_merge[g];
    k.exact[g] = &im.exact[g];
  }
  return k;
}

}  // namespace fake_aot

inline const SegmentLseSm90AotKernels kSegmentLseSm90AotSets[] = {
    fake_aot::set_of(fake_aot::kF16, DType::kFloat16), fake_aot::set_of(fake_aot::kBF16, DType::kBFloat16)};
inline constexpr int kSegmentLseSm90AotSetCount = 2;

}  // namespace cuda
}  // namespace fastood

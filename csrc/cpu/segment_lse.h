// Segmented log-sum-exp over a block of precomputed fp32 logits (CPU, OpenMP).
//
// The CPU backend of fastood's one primitive computes the logits of a block of
// rows with BLAS (torch.mm, from Python) and hands them here. For every row r
// of the block and every column segment s = [off[s], off[s+1]):
//
//   lse[r, s] = log Σ_{j ∈ s} exp(L[r, j])          (-inf for an empty segment)
//   max0[r]   = max_{j ∈ seg 0} L[r, j]             (-inf if segment 0 is empty)
//   arg0[r]   = first j attaining max0[r]            (0 if segment 0 is empty)
//
// NaN propagates like torch: a NaN in a segment makes its lse NaN; a NaN in
// segment 0 makes max0 NaN and arg0 the index of the first NaN. A +inf logit
// gives lse = +inf. Each row is reduced independently in a fixed order, so the
// result is bitwise deterministic and independent of the thread count.
#pragma once

#include <cstdint>

namespace fastood {
namespace cpu {

enum class Isa { Auto = 0, Generic = 1, Avx2 = 2 };

// Which implementation `Isa::Auto` resolves to on this machine ("avx2-fma" or "generic").
const char* resolved_isa_name(Isa isa);

// True when `isa` can run on this machine (Auto and Generic always can).
bool isa_supported(Isa isa);

struct SegmentLseBlock {
  const float* logits = nullptr;  // rows × n_cols, unit column stride
  int64_t rows = 0;
  int64_t n_cols = 0;
  int64_t logits_row_stride = 0;  // in elements
  const int64_t* offsets = nullptr;  // n_segments + 1, validated: 0 = off[0] ≤ … ≤ off[S] = n_cols
  int64_t n_segments = 0;
  float* lse = nullptr;  // rows × n_segments
  int64_t lse_row_stride = 0;
  int64_t lse_col_stride = 1;
  float* max0 = nullptr;  // rows
  int64_t max0_stride = 1;
  int64_t* argmax0 = nullptr;  // rows, or nullptr when not wanted
  int64_t argmax0_stride = 1;
};

// Reduces the block with up to `num_threads` OpenMP threads (≤ 0: the OpenMP default).
// Does not touch the Python interpreter: call it with the GIL released.
void segment_lse_block(const SegmentLseBlock& blk, int num_threads, Isa isa);

// Backward (csrc/cpu/segment_lse_bwd.cpp): overwrite a block of logits L (T = float or
// double) with G[r, j] = g[r, s(j)] · exp(L[r, j] − lse[r, s(j)]), plus h[r] at
// j = arg0[r] when arg0 is given (the subgradient of max0). Offsets validated as above.
template <typename T>
struct SegmentLseBwdBlock {
  T* logits = nullptr;  // rows × n_cols, unit column stride, overwritten
  int64_t rows = 0;
  int64_t n_cols = 0;
  int64_t logits_row_stride = 0;
  const int64_t* offsets = nullptr;  // n_segments + 1
  int64_t n_segments = 0;
  const T* lse = nullptr;  // rows × n_segments, unit column stride
  int64_t lse_row_stride = 0;
  const T* g = nullptr;  // rows × n_segments, unit column stride
  int64_t g_row_stride = 0;
  const int64_t* arg0 = nullptr;  // rows (contiguous) or nullptr
  const T* h = nullptr;           // rows (contiguous), with arg0
};

template <typename T>
void segment_lse_bwd_weights(const SegmentLseBwdBlock<T>& blk, int num_threads);

}  // namespace cpu
}  // namespace fastood

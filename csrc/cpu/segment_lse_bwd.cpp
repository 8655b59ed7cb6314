// Backward of the segmented log-sum-exp: logits → softmax-weighted upstream gradients, in place.
//
// The CPU backward (fastood/ops/_cpu_segment_lse_bwd.py) recomputes a block of logits
// with BLAS, calls this to turn them into ∂ℓ/∂L, and multiplies by the bank with BLAS:
//
//   G[r, j] = g[r, s(j)] · exp(L[r, j] − lse[r, s(j)])  (+ h[r] at j = arg0[r])
//
// w = exp(L − lse) is the softmax weight of column j inside its segment: the forward's
// lse is reused, so no second reduction is needed. A zero upstream gradient writes
// zeros without calling exp (a segment the loss does not use costs one store per
// column). Rows are independent (OpenMP over rows), so the result does not depend
// on the thread count.
#include <cmath>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "segment_lse.h"

namespace fastood {
namespace cpu {

template <typename T>
void segment_lse_bwd_weights(const SegmentLseBwdBlock<T>& blk, int num_threads) {
#ifdef _OPENMP
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
  for (int64_t r = 0; r < blk.rows; ++r) {
    T* row = blk.logits + r * blk.logits_row_stride;
    const T* lse = blk.lse + r * blk.lse_row_stride;
    const T* g = blk.g + r * blk.g_row_stride;
    for (int64_t s = 0; s < blk.n_segments; ++s) {
      const int64_t lo = blk.offsets[s], hi = blk.offsets[s + 1];
      const T gs = g[s];
      if (gs == T(0)) {
        for (int64_t j = lo; j < hi; ++j) row[j] = T(0);
        continue;
      }
      const T m = lse[s];
      for (int64_t j = lo; j < hi; ++j) row[j] = gs * std::exp(row[j] - m);
    }
    if (blk.arg0 != nullptr) row[blk.arg0[r]] += blk.h[r];
  }
}

template void segment_lse_bwd_weights<float>(const SegmentLseBwdBlock<float>&, int);
template void segment_lse_bwd_weights<double>(const SegmentLseBwdBlock<double>&, int);

}  // namespace cpu
}  // namespace fastood

// The wave-aware column-split rule of fastood/ops/_split_plan.py (wave_splits), in C++, for the
// AOT launch sequence (sm90_choose_splits: the segment-0 kernel's splits): the same
// integer/double arithmetic, so the C++ path, the Python launcher and bench/sol.py's model pick
// the same split count. Below it, the hot kernel's stream-K grid (stream_k_programs,
// stream_k_owner of fastood/ops/_triton_segment_lse_sm90.py), in the same integers.
//
//   cost(s) = (ceil(T/s) + c0) * (full + partial),  (full, rest) = divmod(R*s, k*SMs)
//   partial = 0 if rest == 0; solo if rest <= SMs and k > 1 (one block per SM); 1 otherwise
//
// minimised over s in [1, min(T, max_splits)], the fewest splits among equals; 1 when the R row
// blocks alone fill the GPU (R >= k*SMs). c0 = 1 tile, solo = 0.78 (a round with one block per
// SM against a full round of two on the Hopper kernel: 8,512 / 10,922 clk).
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastood {
namespace cuda {

constexpr int64_t kProgramOverheadTiles = 1;
constexpr double kSoloRound = 0.78;

inline int64_t wave_splits(int64_t row_blocks, int64_t tiles, int64_t sms, int64_t blocks_per_sm,
                           int64_t max_splits, int64_t overhead_tiles = kProgramOverheadTiles,
                           double solo = kSoloRound) {
  if (row_blocks < 1 || tiles < 1 || sms < 1 || blocks_per_sm < 1) return 1;
  const int64_t slots = blocks_per_sm * sms;
  if (row_blocks >= slots) return 1;
  const int64_t hi = std::max<int64_t>(1, std::min(tiles, max_splits < 1 ? tiles : max_splits));
  int64_t best = 1;
  double best_cost = -1.0;
  for (int64_t s = 1; s <= hi; ++s) {
    const int64_t programs = row_blocks * s;
    const int64_t full = programs / slots, rest = programs % slots;
    const double partial = rest == 0 ? 0.0 : (rest <= sms && blocks_per_sm > 1 ? solo : 1.0);
    const double cost = static_cast<double>((tiles + s - 1) / s + overhead_tiles) * (static_cast<double>(full) + partial);
    if (best_cost < 0.0 || cost < best_cost - 1e-9) {
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

// The hot kernel's stream-K grid: one program per resident slot (slots = blocks per SM × SMs),
// at most one per unit (U = n_blocks · tiles_per_block), at least one. Program q walks units
// [⌊qU/P⌋, ⌊(q+1)U/P⌋): ⌊U/P⌋ or ⌈U/P⌉ tiles each, one wave with no tail.
inline int64_t stream_k_programs(int64_t n_blocks, int64_t tiles_per_block, int64_t slots) {
  return std::max<int64_t>(1, std::min(slots, n_blocks * tiles_per_block));
}

// The program whose units [⌊qU/P⌋, ⌊(q+1)U/P⌋) hold unit u (0 <= u < U): the largest q with
// ⌊qU/P⌋ <= u, i.e. ⌊((u+1)·P − 1)/U⌋ (the kernels' _owner).
inline int64_t stream_k_owner(int64_t u, int64_t U, int64_t P) { return ((u + 1) * P - 1) / U; }

}  // namespace cuda
}  // namespace fastood

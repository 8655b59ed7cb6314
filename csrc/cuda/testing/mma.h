// TEST ONLY — stands in for CUDA's <mma.h> (nvcuda::wmma) in the CPU emulator
// (fastood_emu.h). Every lane holds the whole fragment: a 16×16 tile stored row-major
// (x[r·C + c]); the real per-lane distribution is opaque to CUDA code, so a correct
// kernel cannot tell the difference. Products are formed exactly (fp16/bf16 → fp32, as
// the tensor cores do) and summed in fp32. load/store check the hardware's rules:
// a 256-bit (32-byte) aligned pointer and ldm a multiple of 16 bytes.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastood_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
  static constexpr int R = M, C = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
  static constexpr int R = K, C = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
  static constexpr int R = M, C = N;
};

template <typename T>
inline void check_pointer_and_ldm(const T* p, unsigned ldm, const char* op) {
  fastood_emu::require_full_warp(op);  // a *_sync collective: every lane must take part
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) fastood_emu::fail(op);  // 256-bit alignment
  if ((static_cast<std::uint64_t>(ldm) * sizeof(T)) % 16 != 0) fastood_emu::fail(op);  // ldm: 16-byte multiple
}
template <typename T>
inline float to_f32(T v) {
  return static_cast<float>(v);
}
// fp16 → fp32 through a table: the toolkit's host conversion is bit manipulation per
// call, too slow for the emulator's inner loop (exact either way).
inline float to_f32(__half v) {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (unsigned i = 0; i < 65536; ++i) t[i] = __half2float(__ushort_as_half(static_cast<unsigned short>(i)));
    return t;
  }();
  return table[__half_as_ushort(v)];
}
}  // namespace detail

template <class Use, int M, int N, int K, typename T, class Layout = void>
struct fragment {
  static constexpr int R = detail::shape<Use, M, N, K>::R;
  static constexpr int C = detail::shape<Use, M, N, K>::C;
  static constexpr int num_elements = R * C;
  T x[R * C];
  float f32[R * C];  // emulator only: x converted at load time (operands are read 16 times per mma)
};

template <class Use, int M, int N, int K, typename T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// matrix_a / matrix_b: the layout is part of the fragment type.
template <class Use, int M, int N, int K, typename T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>, "operand fragments need a layout");
  detail::check_pointer_and_ldm(p, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
  constexpr int R = fragment<Use, M, N, K, T, Layout>::R, C = fragment<Use, M, N, K, T, Layout>::C;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      f.x[r * C + c] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[r + c * ldm];
      f.f32[r * C + c] = detail::to_f32(f.x[r * C + c]);
    }
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::check_pointer_and_ldm(p, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm];
}

// The warp stores one tile: lane 0 writes it (identical copies in every lane would be
// 32 racing writes). Readers in other lanes need a __syncwarp/__syncthreads first, as
// on the hardware.
template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::check_pointer_and_ldm(p, ldm, "wmma::store_matrix_sync: pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
  if (!fastood_emu::collective_writer()) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm]) = f.x[r * N + c];
}

// d = a·b + c (d may alias c).
template <int M, int N, int K, typename Tab, class La, class Lb, typename Tc>
inline void mma_sync(fragment<accumulator, M, N, K, Tc>& d, const fragment<matrix_a, M, N, K, Tab, La>& a,
                     const fragment<matrix_b, M, N, K, Tab, Lb>& b, const fragment<accumulator, M, N, K, Tc>& c) {
  Tc out[M * N];
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < N; ++n) {
      float s = 0.0f;
      for (int k = 0; k < K; ++k) s += a.f32[r * K + k] * b.f32[k * N + n];
      out[r * N + n] = c.x[r * N + n] + s;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace nvcuda

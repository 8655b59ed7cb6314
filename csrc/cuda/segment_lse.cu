// Segmented log-sum-exp over a similarity GEMM — the CUDA C++ kernel.
//
// Math and contract: fastood_cuda.cuh (same as the Triton kernel in
// fastood/ops/_triton_segment_lse.py; the two are independent implementations).
//
// Kernel 1, `fwd`: block (bx, p) owns rows [bx·128, bx·128+128) of x and the columns
// [p·chunk, min(N, (p+1)·chunk)) of the bank, walked in 64-column tiles.
//   * GEMM tile (128 × 64, fp32 accumulation), over D in chunks:
//       fp16 / bf16: 4 warps, each a 32 × 64 slab = 2 × 4 WMMA 16×16×16 fragments
//         (mma.sync on tensor cores), K-chunks of 32 staged in shared memory;
//       fp32: 128 threads, each an 8 × 8 register micro-tile of IEEE fp32 FMAs
//         (no TF32: at τ = 0.01 every cosine error is multiplied by 100), K-chunks of 16.
//     Global loads of the next K-chunk are issued into registers before the current
//     chunk is multiplied (software pipelining); 16-byte vector loads when rows are
//     16-byte aligned and D is a multiple of 8 (fp16/bf16), scalar loads otherwise.
//   * The tile is stored to shared memory column-major (C[c][r]) and reduced by one
//     thread per row (conflict-free: consecutive threads read consecutive words).
//     Online state per row, base 2, with t = L·log2(e):
//         m = max t seen,  l = Σ exp2(t − m),  lse = (m + log2 l)·ln 2;
//     adding values t_j: m' = max(m, max_j t_j), l' = l·exp2(m − m') + Σ_j exp2(t_j − m'),
//     with the reference point 0 while m' = −inf (no −inf − (−inf) NaN).
//     Segments are column ranges shared by all rows, so the segment cursor (s, its
//     [lo, hi)) is uniform across the block: every segment intersecting a tile is
//     visited in column order; one that ends inside the tile is closed (result written,
//     state reset). Segment 0 also tracks the first argmax: within a tile the scan
//     keeps the first maximal column, across tiles only a strictly larger max replaces it.
//   * Single pass (splits == 1): results go straight to lse / max0 / argmax0.
//     Split pass: the partial (m, l) of every segment the split touches goes to a
//     workspace laid out (split, segment, row) — rows contiguous, so the merge reads
//     are coalesced — and the segment-0 argmax to (split, row).
// Kernel 2, `merge` (split only): one thread per (segment s, row) combines, in split
//   order, exactly the splits that s spans: p ∈ [off[s] / chunk, (off[s+1] − 1) / chunk].
// No atomics anywhere: the result is bitwise deterministic for a given split plan.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "fastood_cuda.cuh"
#ifdef FASTOOD_WITH_TRITON_AOT
#include "segment_lse_aot.h"
#endif

namespace fastood {
namespace cuda {
namespace {

constexpr int kThreads = 128;              // 4 warps; the epilogue uses one thread per row
constexpr int TB = static_cast<int>(kTileB);  // 128 rows per block
constexpr int TN = static_cast<int>(kTileN);  // 64 columns per tile
constexpr int LDC = TB + 4;                // column-major C tile: C[c][r] at c·LDC + r
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

static_assert(kThreads == TB, "the epilogue maps one thread to one row");

// Tensor-core (WMMA) path for 16-bit operands.
constexpr int TK_H = 32;        // D chunk
constexpr int LDS_H = TK_H + 8;  // smem row stride in elements (80 bytes: 16-byte rows, WMMA-aligned fragments)
// SIMT path for fp32.
constexpr int TK_F = 16;
constexpr int LDA_F = TB + 4;  // A stored k-major: A[k][r]
constexpr int LDB_F = TN + 4;  // B stored k-major: B[k][n]

struct FwdParams {
  const void* x;
  const void* bank;
  const int64_t* offsets;
  const float* row_scale;
  float* lse;
  float* max0;
  int64_t* argmax0;  // nullptr when not wanted
  float* ws_m;       // split workspace (nullptr when single pass)
  float* ws_l;
  int32_t* ws_arg;
  int64_t ldx, ldb;
  int B, N, D, S;
  int chunk;
  int split;  // 0: single pass, 1: write partials
};

struct MergeParams {
  const float* ws_m;
  const float* ws_l;
  const int32_t* ws_arg;
  const int64_t* offsets;
  float* lse;
  float* max0;
  int64_t* argmax0;
  int B, S, chunk, row_blocks;
};

__device__ __forceinline__ float finish_lse(float m, float l) {
  // m = -inf (nothing seen) gives -inf; when m is finite, l >= 1.
  return (m + log2f(fmaxf(l, 1e-30f))) * kLn2;
}

// ------------------------------------------------------------------ shared memory
// 16-bit operands are kept as raw bits (uint16_t) so the union stays trivially
// constructible; WMMA reads them through a T* view.
struct SmemHalf {
  union {
    struct {
      uint16_t a[TB * LDS_H];  // x chunk, row-major [r][k]
      uint16_t b[TN * LDS_H];  // bank chunk, [n][k] (= column-major K×N operand)
    } ab;
    float c[TN * LDC];  // the finished tile, column-major
  };
};

struct SmemF32 {
  union {
    struct {
      float a[TK_F * LDA_F];  // [k][r]
      float b[TK_F * LDB_F];  // [k][n]
    } ab;
    float c[TN * LDC];
  };
};

// ----------------------------------------------------------- fp16 / bf16 GEMM tile
// 8 halves (16 bytes) of one row: a vector load when VEC, else bounds-checked scalars.
template <typename T, bool VEC>
__device__ __forceinline__ uint4 load8(const T* __restrict__ row_ptr, bool row_ok, int d, int D) {
  static_assert(sizeof(T) == 2, "16-bit operands only");
  uint4 out = make_uint4(0u, 0u, 0u, 0u);
  if (!row_ok) return out;
  const T* p = row_ptr + d;
  if (VEC) {
    if (d < D) out = *reinterpret_cast<const uint4*>(p);  // D % 8 == 0: the 8 are all in or all out
  } else {
    // Zero bits are +0.0 in fp16 and bf16; element e goes to the low half of word e/2
    // (little-endian, the layout a 16-byte vector load would produce).
    const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
    uint32_t w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t lo = (d + 2 * e < D) ? q[2 * e] : 0u;
      const uint32_t hi = (d + 2 * e + 1 < D) ? q[2 * e + 1] : 0u;
      w[e] = lo | (hi << 16);
    }
    out = make_uint4(w[0], w[1], w[2], w[3]);
  }
  return out;
}

// acc[i][j] (rows warp·32 + 16i, cols 16j) += x_blk · bank_tileᵀ over all of D.
template <typename T, bool VEC>
__device__ __forceinline__ void gemm_tile_half(
    const T* __restrict__ x, const T* __restrict__ bank, int64_t ldx, int64_t ldb, int row0, int n0, int B, int N,
    int D, SmemHalf& sm,
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[2][4]) {
  using namespace nvcuda;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  // Per thread: 4 vectors of the x chunk (128 rows × 4 vectors) and 2 of the bank chunk (64 × 4).
  constexpr int kVa = TB * (TK_H / 8) / kThreads;  // 4
  constexpr int kVb = TN * (TK_H / 8) / kThreads;  // 2
  uint4 ra[kVa], rb[kVb];

  // Vector i of this thread: the 8 elements at d = v·8 (v = tid % 4) of row (tid / 4) + 32i.
  constexpr int kVecPerRow = TK_H / 8;              // 4
  constexpr int kRowStep = kThreads / kVecPerRow;   // 32
  const int v_me = tid % kVecPerRow;
  const int r_me = tid / kVecPerRow;
  const T* __restrict__ xp = x + static_cast<int64_t>(row0 + r_me) * ldx;
  const T* __restrict__ bp = bank + static_cast<int64_t>(n0 + r_me) * ldb;
  const int64_t x_step = kRowStep * ldx, b_step = kRowStep * ldb;
  auto fetch = [&](int d0) {
    const int d = d0 + v_me * 8;
#pragma unroll
    for (int i = 0; i < kVa; ++i) ra[i] = load8<T, VEC>(xp + i * x_step, row0 + r_me + kRowStep * i < B, d, D);
#pragma unroll
    for (int i = 0; i < kVb; ++i) rb[i] = load8<T, VEC>(bp + i * b_step, n0 + r_me + kRowStep * i < N, d, D);
  };
  auto stash = [&]() {
#pragma unroll
    for (int i = 0; i < kVa; ++i)
      *reinterpret_cast<uint4*>(&sm.ab.a[(r_me + kRowStep * i) * LDS_H + v_me * 8]) = ra[i];
#pragma unroll
    for (int i = 0; i < kVb; ++i)
      *reinterpret_cast<uint4*>(&sm.ab.b[(r_me + kRowStep * i) * LDS_H + v_me * 8]) = rb[i];
  };

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  fetch(0);
  stash();
  __syncthreads();
  for (int d0 = 0; d0 < D; d0 += TK_H) {
    const bool more = d0 + TK_H < D;
    if (more) fetch(d0 + TK_H);  // in flight while the tensor cores work on this chunk
#pragma unroll
    for (int kk = 0; kk < TK_H; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(fa[i], reinterpret_cast<const T*>(&sm.ab.a[(warp * 32 + i * 16) * LDS_H + kk]), LDS_H);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        wmma::load_matrix_sync(fb[j], reinterpret_cast<const T*>(&sm.ab.b[(j * 16) * LDS_H + kk]), LDS_H);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // everyone is done reading this chunk
    if (more) {
      stash();
      __syncthreads();
    }
  }
}

template <typename T, bool VEC>
__device__ __forceinline__ void tile_logits_half(const FwdParams& p, int row0, int n0, SmemHalf& sm) {
  using namespace nvcuda;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
  gemm_tile_half<T, VEC>(static_cast<const T*>(p.x), static_cast<const T*>(p.bank), p.ldx, p.ldb, row0, n0, p.B, p.N,
                         p.D, sm, acc);
  // gemm_tile_half ends with a barrier: the A/B buffers are free, C may overwrite them.
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      wmma::store_matrix_sync(&sm.c[(j * 16) * LDC + warp * 32 + i * 16], acc[i][j], LDC, wmma::mem_col_major);
  __syncthreads();
}

// ---------------------------------------------------------------------- fp32 GEMM tile
__device__ __forceinline__ void tile_logits_f32(const FwdParams& p, int row0, int n0, SmemF32& sm) {
  const float* __restrict__ x = static_cast<const float*>(p.x);
  const float* __restrict__ bank = static_cast<const float*>(p.bank);
  const int tid = threadIdx.x;
  const int tr = tid % 16;  // rows tr·8 … tr·8+7
  const int tc = tid / 16;  // cols tc·8 … tc·8+7
  constexpr int kLa = TB * TK_F / kThreads;  // 16 x values per thread per chunk
  constexpr int kLb = TN * TK_F / kThreads;  // 8 bank values
  float ra[kLa], rb[kLb];
  const int B = p.B, N = p.N, D = p.D;

  // Element i of this thread: column k = tid % 16 of the chunk, row (tid / 16) + 8i —
  // 16 consecutive threads read 16 consecutive d of one row.
  constexpr int kRowStep = kThreads / TK_F;  // 8
  const int k_me = tid % TK_F;
  const int r_me = tid / TK_F;
  const float* __restrict__ xp = x + static_cast<int64_t>(row0 + r_me) * p.ldx + k_me;
  const float* __restrict__ bp = bank + static_cast<int64_t>(n0 + r_me) * p.ldb + k_me;
  const int64_t x_step = kRowStep * p.ldx, b_step = kRowStep * p.ldb;
  auto fetch = [&](int d0) {
    const bool d_ok = d0 + k_me < D;
#pragma unroll
    for (int i = 0; i < kLa; ++i)
      ra[i] = (d_ok && row0 + r_me + kRowStep * i < B) ? xp[i * x_step + d0] : 0.0f;
#pragma unroll
    for (int i = 0; i < kLb; ++i)
      rb[i] = (d_ok && n0 + r_me + kRowStep * i < N) ? bp[i * b_step + d0] : 0.0f;
  };
  auto stash = [&]() {
#pragma unroll
    for (int i = 0; i < kLa; ++i) sm.ab.a[k_me * LDA_F + r_me + kRowStep * i] = ra[i];
#pragma unroll
    for (int i = 0; i < kLb; ++i) sm.ab.b[k_me * LDB_F + r_me + kRowStep * i] = rb[i];
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  fetch(0);
  stash();
  __syncthreads();
  for (int d0 = 0; d0 < D; d0 += TK_F) {
    const bool more = d0 + TK_F < D;
    if (more) fetch(d0 + TK_F);
#pragma unroll
    for (int k = 0; k < TK_F; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(&sm.ab.a[k * LDA_F + tr * 8]);
      const float4 a1 = *reinterpret_cast<const float4*>(&sm.ab.a[k * LDA_F + tr * 8 + 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&sm.ab.b[k * LDB_F + tc * 8]);
      const float4 b1 = *reinterpret_cast<const float4*>(&sm.ab.b[k * LDB_F + tc * 8 + 4]);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
    if (more) {
      stash();
      __syncthreads();
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int i = 0; i < 8; ++i) sm.c[(tc * 8 + j) * LDC + tr * 8 + i] = acc[i][j];
  __syncthreads();
}

// ------------------------------------------------------------ epilogue and main kernel
// Online segmented reduction of one finished tile (sm_c, column-major) for the row of
// this thread. State and the (block-uniform) segment cursor are updated in place.
struct RowState {
  float m;    // running max, base 2
  float l;    // Σ exp2(t − m)
  int arg;    // segment-0 first argmax (global column)
};

struct SegCursor {
  int s;       // open segment
  int lo, hi;  // its columns
};

__device__ __forceinline__ void write_closed(const FwdParams& p, int pid, int row, bool row_ok, int s,
                                             const RowState& st) {
  if (!row_ok) return;
  if (p.split) {
    const int64_t w = (static_cast<int64_t>(pid) * p.S + s) * p.B + row;
    p.ws_m[w] = st.m;
    p.ws_l[w] = st.l;
    if (s == 0 && p.argmax0 != nullptr) p.ws_arg[static_cast<int64_t>(pid) * p.B + row] = st.arg;
  } else {
    p.lse[static_cast<int64_t>(row) * p.S + s] = finish_lse(st.m, st.l);
    if (s == 0) {
      p.max0[row] = st.m * kLn2;
      if (p.argmax0 != nullptr) p.argmax0[row] = st.arg;
    }
  }
}

__device__ __forceinline__ void reduce_tile(const FwdParams& p, const float* sm_c, int n0, int n_end, int pid,
                                            int row, bool row_ok, float t_scale, RowState& st, SegCursor& cur) {
  const int r = threadIdx.x;
  if (cur.s >= p.S) return;  // every segment already closed (cannot happen before the last tile)
  bool go = n0 < n_end;
  while (go) {
    const int lo = max(cur.lo, n0);
    const int hi = min(cur.hi, n_end);
    // Pass 1: max of the piece and its first position. The product is __fmul_rn, not
    // `*`: nvcc may contract a plain product with a following add into one FFMA (it does
    // in pass 2, `v·s − m`), which rounds once instead of twice; the intrinsic is never
    // contracted, so both passes see the same rounded t (tests/test_static_cuda.py
    // checks the SASS: FMUL → FADD → MUFU.EX2, no FFMA feeding the exp2).
    float mt = -INFINITY;
    int at = 0;
    for (int c = lo; c < hi; ++c) {
      const float t = __fmul_rn(sm_c[(c - n0) * LDC + r], t_scale);
      if (t > mt) {
        mt = t;
        at = c;
      }
    }
    if (cur.s == 0 && mt > st.m) st.arg = at;
    const float m_new = fmaxf(st.m, mt);
    const float m_ref = (m_new == -INFINITY) ? 0.0f : m_new;
    // Pass 2: rescaled sum over the same t as pass 1, bit for bit (both __fmul_rn), so
    // the maximal element contributes exactly exp2(0) = 1 and l >= 1 when m is finite.
    float sum = 0.0f;
    for (int c = lo; c < hi; ++c) sum += exp2f(__fmul_rn(sm_c[(c - n0) * LDC + r], t_scale) - m_ref);
    st.l = st.l * exp2f(st.m - m_ref) + sum;
    st.m = m_new;

    const bool ends = cur.hi <= n_end;
    if (!ends) break;
    write_closed(p, pid, row, row_ok, cur.s, st);
    st.m = -INFINITY;
    st.l = 0.0f;
    cur.s += 1;
    if (cur.s >= p.S) break;
    cur.lo = cur.hi;
    cur.hi = static_cast<int>(p.offsets[cur.s + 1]);
    // Go on while the next segment has columns in this tile, or ends in it (empty).
    go = (cur.lo < n_end) || (cur.hi <= n_end);
  }
}

template <typename Smem, typename TileFn>
__device__ __forceinline__ void run_block(const FwdParams& p, Smem& sm, TileFn tile) {
  const int row0 = blockIdx.x * TB;
  const int pid = blockIdx.y;
  const int row = row0 + threadIdx.x;
  const bool row_ok = row < p.B;
  const float t_scale = row_ok ? p.row_scale[row] * kLog2e : 0.0f;

  const int col_lo = pid * p.chunk;  // < N: the plan has no empty split
  const int col_hi = static_cast<int>(min(static_cast<int64_t>(p.N), static_cast<int64_t>(col_lo) + p.chunk));

  SegCursor cur;
  if (p.split) {
    // First segment ending after col_lo (binary search over off[1..S]); earlier ones
    // have no column here, and leading empty ones are finished by the merge.
    int lo = 0, hi = p.S - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (p.offsets[mid + 1] > col_lo) hi = mid; else lo = mid + 1;
    }
    cur.s = lo;
  } else {
    cur.s = 0;  // leading empty segments are closed in the first tile
  }
  cur.lo = static_cast<int>(p.offsets[cur.s]);
  cur.hi = static_cast<int>(p.offsets[cur.s + 1]);

  RowState st{-INFINITY, 0.0f, 0};
  for (int n0 = col_lo; n0 < col_hi; n0 += TN) {
    tile(p, row0, n0, sm);
    reduce_tile(p, sm.c, n0, min(n0 + TN, col_hi), pid, row, row_ok, t_scale, st, cur);
    __syncthreads();  // the next tile's loads overwrite sm
  }
  if (p.split && cur.s < p.S && row_ok) {
    // The segment still open continues in the next split: flush its partial state.
    // (If it has no column in this split, the merge never reads this entry.)
    const int64_t w = (static_cast<int64_t>(pid) * p.S + cur.s) * p.B + row;
    p.ws_m[w] = st.m;
    p.ws_l[w] = st.l;
    if (cur.s == 0 && p.argmax0 != nullptr) p.ws_arg[static_cast<int64_t>(pid) * p.B + row] = st.arg;
  }
}

template <typename T, bool VEC>
struct HalfTile {
  __device__ __forceinline__ void operator()(const FwdParams& p, int row0, int n0, SmemHalf& sm) const {
    tile_logits_half<T, VEC>(p, row0, n0, sm);
  }
};
struct F32Tile {
  __device__ __forceinline__ void operator()(const FwdParams& p, int row0, int n0, SmemF32& sm) const {
    tile_logits_f32(p, row0, n0, sm);
  }
};

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) segment_lse_fwd_half(FwdParams p) {
  __shared__ __align__(128) SmemHalf sm;
  run_block(p, sm, HalfTile<T, VEC>{});
}

__global__ void __launch_bounds__(kThreads) segment_lse_fwd_f32(FwdParams p) {
  __shared__ __align__(128) SmemF32 sm;
  run_block(p, sm, F32Tile{});
}

// One thread per (segment, row): combine the splits segment s spans, in split order.
__global__ void __launch_bounds__(kThreads) segment_lse_merge(MergeParams p) {
  const int s = blockIdx.x / p.row_blocks;
  const int row = (blockIdx.x % p.row_blocks) * kThreads + threadIdx.x;
  if (row >= p.B) return;
  const int64_t seg_lo = p.offsets[s], seg_hi = p.offsets[s + 1];
  const int64_t p_first = seg_lo / p.chunk;
  const int64_t n_parts = seg_hi > seg_lo ? (seg_hi - 1) / p.chunk - p_first + 1 : 0;
  float m = -INFINITY, l = 0.0f;
  int arg = 0;
  for (int64_t k = 0; k < n_parts; ++k) {
    const int64_t q = p_first + k;
    const int64_t w = (q * p.S + s) * p.B + row;
    const float mq = p.ws_m[w], lq = p.ws_l[w];
    if (s == 0 && p.argmax0 != nullptr && mq > m) arg = p.ws_arg[q * p.B + row];  // earlier split wins ties
    const float m_new = fmaxf(m, mq);
    const float m_ref = (m_new == -INFINITY) ? 0.0f : m_new;
    l = l * exp2f(m - m_ref) + lq * exp2f(mq - m_ref);
    m = m_new;
  }
  p.lse[static_cast<int64_t>(row) * p.S + s] = finish_lse(m, l);
  if (s == 0) {
    p.max0[row] = m * kLn2;
    if (p.argmax0 != nullptr) p.argmax0[row] = arg;
  }
}

// First segment of each split: out[p] = the first s with off[s+1] > p·chunk (S when none),
// i.e. torch.searchsorted(off[1:], p·chunk, right=True) — the table the Triton forward
// kernel reads (the C++ kernel finds it itself, see run_block).
__global__ void __launch_bounds__(kThreads) split_starts_kernel(const int64_t* __restrict__ off, int S, int64_t chunk,
                                                               int splits, int32_t* __restrict__ out) {
  for (int p = blockIdx.x * kThreads + threadIdx.x; p < splits; p += gridDim.x * kThreads) {
    const int64_t start = static_cast<int64_t>(p) * chunk;
    int lo = 0, hi = S;
    while (lo < hi) {
      const int mid = lo + (hi - lo) / 2;
      if (off[mid + 1] > start) hi = mid; else lo = mid + 1;
    }
    out[p] = lo;
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }

WsLayout ws_layout(int64_t splits, int64_t S, int64_t B) {
  WsLayout w{};
  const int64_t part = align256(splits * S * B * static_cast<int64_t>(sizeof(float)));
  w.m_off = 0;
  w.l_off = part;
  w.arg_off = 2 * part;
  w.starts_off = 2 * part + align256(splits * B * static_cast<int64_t>(sizeof(int32_t)));
  w.total = w.starts_off + align256(splits * static_cast<int64_t>(sizeof(int32_t)));
  return w;
}

std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

bool aligned16(const void* ptr, int64_t ld, int64_t D) {
  return (reinterpret_cast<uintptr_t>(ptr) % 16 == 0) && (ld % 8 == 0) && (D % 8 == 0);
}

// The forward kernel segment_lse launches for (dtype, vec), as an untyped pointer for the
// occupancy API; nullptr for an unknown dtype.
const void* fwd_kernel(DType dtype, bool vec) {
  switch (dtype) {
    case DType::kFloat16:
      return vec ? reinterpret_cast<const void*>(&segment_lse_fwd_half<__half, true>)
                 : reinterpret_cast<const void*>(&segment_lse_fwd_half<__half, false>);
    case DType::kBFloat16:
      return vec ? reinterpret_cast<const void*>(&segment_lse_fwd_half<__nv_bfloat16, true>)
                 : reinterpret_cast<const void*>(&segment_lse_fwd_half<__nv_bfloat16, false>);
    case DType::kFloat32:
      return reinterpret_cast<const void*>(&segment_lse_fwd_f32);
  }
  return nullptr;
}

#ifdef FASTOOD_WITH_TRITON_AOT
// Compute capability major of the current device (0 when there is none).
int device_cc_major() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return major;
}

// sm90_request's fitting on one kernel set: shrink the larger of segment 0's partials
// (splits0·B·12 bytes) and the hot kernel's boundary slots (~(P + 1)·(8·block_b + 12) bytes)
// until the layout is <= max_bytes (or both are at their minimum). Fewer programs stay a
// correct stream-K schedule, only a less even one.
Sm90Request fit_sm90(const SegmentLseSm90AotKernels& k, int64_t B, int64_t N, int64_t programs, int64_t splits0,
                     int64_t max_bytes) {
  Sm90Plan p = sm90_plan(programs, splits0);
  Sm90WsLayout w = sm90_workspace_layout(p, B, N, k.block_b);
  while (w.total > max_bytes && (p.programs > 1 || p.splits0 > 1)) {
    const int64_t hot = p.programs > 1 ? (p.programs + 1) * (8 * int64_t{k.block_b} + 12) : 0;
    const int64_t seg0 = p.splits0 > 1 ? p.splits0 * B * 12 : 0;
    if (hot >= seg0) p.programs = std::max<int64_t>(1, p.programs / 2);
    else p.splits0 -= 1;
    w = sm90_workspace_layout(p, B, N, k.block_b);
  }
  Sm90Request r;
  r.programs = p.programs;
  r.splits0 = p.splits0;
  r.workspace_bytes = w.total;
  return r;
}
#endif

}  // namespace

bool sm90_request(DType dtype, int64_t B, int64_t N, int64_t S, int sm_count, int64_t num_splits, int64_t max_bytes,
                  Sm90Request* out, std::string* why) {
  if (out != nullptr) *out = Sm90Request{0, 0, 0};
  if (B < 1 || N < 1 || S < 1) {
    if (why) *why = "sm90_request: B, N and S must be >= 1";
    return false;
  }
#ifdef FASTOOD_WITH_TRITON_AOT
  const SegmentLseSm90AotKernels* k = sm90_aot_kernels_for(dtype, why);
  if (k == nullptr) return false;
  // As the Python launcher: num_splits forces segment 0's splits only; the hot kernel's
  // stream-K grid is two programs per SM, at most one per tile.
  (void)S;  // the layout no longer grows with S (no per-segment split partials)
  const int sms = std::max(sm_count, 1);
  const int64_t programs = sm90_choose_programs(B, N, sms, k->block_b, k->block_n);
  const int64_t splits0 = num_splits >= 1 ? num_splits : sm90_choose_splits(B, N, 1, sms, k->block_b, k->block_n);
  const Sm90Request r = fit_sm90(*k, B, N, programs, std::min<int64_t>(splits0, 65535), max_bytes);
  if (out != nullptr) *out = r;
  return true;
#else
  (void)dtype, (void)sm_count, (void)num_splits, (void)max_bytes;
  if (why) *why = "built without FASTOOD_TRITON_AOT";
  return false;
#endif
}

int64_t sm90_workspace_bound(int64_t B, int64_t N, int64_t S, int64_t max_partials_bytes) {
  int64_t bound = 0;
#ifdef FASTOOD_WITH_TRITON_AOT
  B = std::max<int64_t>(B, 1);
  N = std::max<int64_t>(N, 1);
  for (int i = 0; i < sm90_aot_set_count(); ++i) {
    const SegmentLseSm90AotKernels& k = *sm90_aot_set(i);
    if (k.block_b < 1 || k.block_n < 1) continue;
    // The most any request takes: one program per hot tile (stream_k_programs' cap) and one
    // segment-0 split per column tile (wave_splits' cap).
    const int64_t tiles = cdiv(N, k.block_n);
    const int64_t base = sm90_workspace_layout(sm90_plan(1, 1), B, N, k.block_b).total;
    const int64_t most = sm90_workspace_layout(sm90_plan(cdiv(B, k.block_b) * tiles, tiles), B, N, k.block_b).total;
    bound = std::max(bound, base + std::min(max_partials_bytes, most - base));
  }
#else
  (void)B, (void)N, (void)S, (void)max_partials_bytes;
#endif
  return bound;
}

WsLayout split_workspace_layout(int64_t splits, int64_t S, int64_t B) { return ws_layout(splits, S, B); }

std::string launch_split_starts(const int64_t* offsets, int64_t S, int64_t chunk, int64_t splits, int32_t* out,
                                void* stream) {
  if (offsets == nullptr || out == nullptr || S < 1 || chunk < 1 || splits < 1 || splits > 65535 || S > (1 << 30))
    return "launch_split_starts: invalid arguments";
  (void)cudaGetLastError();
  const unsigned blocks = static_cast<unsigned>(cdiv(splits, kThreads));
  split_starts_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      offsets, static_cast<int>(S), chunk, static_cast<int>(splits), out);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : cuda_error("fastood split-starts kernel launch failed", e);
}

bool fwd_vector_loads(const void* x, int64_t ldx, const void* bank, int64_t ldb, int64_t D) {
  return aligned16(x, ldx, D) && aligned16(bank, ldb, D);
}

int fwd_blocks_per_sm(DType dtype, bool vec, std::string* err) {
  const void* k = fwd_kernel(dtype, vec);
  if (k == nullptr) {
    if (err) *err = "fwd_blocks_per_sm: unknown dtype";
    return -1;
  }
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) {
    if (err) *err = cuda_error("cudaGetDevice", e);
    return -1;
  }
  // Cached per (device, kernel): the head asks on every enqueue (TensorRT's hot path).
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find({dev, k});
    if (it != cache.end()) return it->second;
  }
  int n = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kThreads, 0);
  if (e != cudaSuccess) {
    if (err) *err = cuda_error("cudaOccupancyMaxActiveBlocksPerMultiprocessor", e);
    return -1;
  }
  if (n < 1) {
    if (err) *err = "cudaOccupancyMaxActiveBlocksPerMultiprocessor: the forward kernel does not fit an SM";
    return n;
  }
  std::lock_guard<std::mutex> lock(mu);
  cache[{dev, k}] = n;
  return n;
}

int64_t split_workspace_bytes(int64_t splits, int64_t S, int64_t B) {
  return splits > 1 ? ws_layout(splits, S, B).total : 0;
}

SplitPlan plan_splits(int64_t B, int64_t N, int64_t S, int sm_count, int blocks_per_sm, int64_t num_splits,
                      int64_t max_workspace_bytes) {
  SplitPlan plan;
  const int64_t tiles = std::max<int64_t>(1, cdiv(N, kTileN));
  int64_t splits = 1;
  if (num_splits > 0) {
    splits = num_splits;
  } else {
    const int64_t row_blocks = cdiv(std::max<int64_t>(B, 1), kTileB);
    // One full wave: every resident-block slot of every SM busy. The slots per SM come
    // from the occupancy API (3 for the 164-168-register forward kernels on sm_80/sm_90,
    // not the 4 that 128-thread blocks would allow if registers did not bind).
    const int64_t target = int64_t{std::max(blocks_per_sm, 1)} * std::max(sm_count, 1);
    if (row_blocks < target) splits = cdiv(target, row_blocks);
  }
  splits = std::min<int64_t>({splits, tiles, 65535});
  if (splits > 1) {
    // Keep the workspace bounded (it scales with splits · S · B).
    const int64_t per_split = ws_layout(2, S, B).total - ws_layout(1, S, B).total + 512;
    const int64_t fit = std::max<int64_t>(1, max_workspace_bytes / std::max<int64_t>(per_split, 1));
    splits = std::min(splits, fit);
  }
  int64_t chunk = cdiv(cdiv(std::max<int64_t>(N, 1), splits), kTileN) * kTileN;
  splits = cdiv(std::max<int64_t>(N, 1), chunk);  // rounding the chunk up may leave fewer splits
  while (splits > 1 && ws_layout(splits, S, B).total > max_workspace_bytes) {
    // Rare (tiny caps): shrink until the exact layout fits.
    --splits;
    chunk = cdiv(cdiv(N, splits), kTileN) * kTileN;
    splits = cdiv(N, chunk);
  }
  plan.splits = splits;
  plan.chunk = splits > 1 ? chunk : cdiv(std::max<int64_t>(N, 1), kTileN) * kTileN;
  plan.workspace_bytes = splits > 1 ? ws_layout(splits, S, B).total : 0;
  return plan;
}

std::string segment_lse(const SegmentLseArgs& a) {
  if (a.B < 1 || a.N < 1 || a.D < 1 || a.S < 1) return "segment_lse: B, N, D and S must be >= 1";
  if (a.N > kMaxColumns) return "segment_lse: the bank has too many rows for 32-bit column indices";
  if (a.B > (int64_t{1} << 31) - 1 - kTileB) return "segment_lse: the batch has too many rows";
  if (a.D > (int64_t{1} << 30)) return "segment_lse: the feature width is too large";
  if (a.S > (int64_t{1} << 30)) return "segment_lse: too many segments";
  if (a.ldx < 0 || a.ldb < 0) return "segment_lse: row strides must be >= 0";
  if (!a.x || !a.bank || !a.offsets || !a.row_scale || !a.lse || !a.max0)
    return "segment_lse: a required device pointer is null";
  const SplitPlan& plan = a.plan;
  if (plan.splits < 1 || plan.chunk < kTileN || plan.chunk % kTileN != 0 || plan.chunk > kMaxColumns)
    return "segment_lse: invalid split plan (use plan_splits)";
  if (plan.splits > 1 && cdiv(a.N, plan.chunk) != plan.splits) return "segment_lse: split plan does not match N";
  if (plan.splits == 1 && plan.chunk < a.N) return "segment_lse: a single pass needs chunk >= N";

  // Which kernels run (cuda_path.h): the Hopper AOT sequence, the portable AOT kernel, or
  // the CUDA C++ kernel below; FASTOOD_CUDA_PATH forces one.
  const bool half = a.dtype == DType::kFloat16 || a.dtype == DType::kBFloat16;
#ifdef FASTOOD_WITH_TRITON_AOT
  std::string sm90_unfit, aot_unfit;
  const SegmentLseSm90AotKernels* k90 = sm90_aot_kernels_for(a.dtype, &sm90_unfit);
  if (k90 != nullptr) sm90_unfit = segment_lse_sm90_aot_applicable(a, *k90);
  const SegmentLseAotKernels* kaot = aot_kernels_for(a.dtype, &aot_unfit);
  if (kaot != nullptr) aot_unfit = segment_lse_aot_applicable(a, *kaot);
  const PathChoice choice =
      choose_cuda_path(device_cc_major(), half, a.B, sm90_unfit, aot_unfit, std::getenv("FASTOOD_CUDA_PATH"));
#else
  const std::string not_built = "not embedded (built without FASTOOD_TRITON_AOT)";
  const PathChoice choice = choose_cuda_path(0, half, a.B, not_built, not_built, std::getenv("FASTOOD_CUDA_PATH"));
#endif
  if (!choice.error.empty()) return "segment_lse: " + choice.error;
  const auto report = [&](const std::string& what) {
    if (a.path != nullptr) *a.path = choice.why.empty() ? what : what + " (" + choice.why + ")";
  };
#ifdef FASTOOD_WITH_TRITON_AOT
  if (choice.path == CudaPath::kSm90) {
    // The caller's requests (sized with sm90_request), else the launcher's heuristic for the
    // one not given; the workspace must hold the sequence's layout: a clear error otherwise,
    // never another path.
    int64_t programs = a.sm90_programs, splits0 = a.sm90_splits0;
    if (programs < 1 || splits0 < 1) {
      std::string e;
      const int dev = current_device(&e);
      const int sms = dev >= 0 ? device_sm_count(dev, &e) : -1;
      if (sms < 1) return "segment_lse: " + e;
      if (programs < 1) programs = sm90_choose_programs(a.B, a.N, sms, k90->block_b, k90->block_n);
      if (splits0 < 1) splits0 = sm90_choose_splits(a.B, a.N, 1, sms, k90->block_b, k90->block_n);
    }
    const Sm90Plan plan90 = sm90_plan(programs, splits0);
    const Sm90WsLayout w = sm90_workspace_layout(plan90, a.B, a.N, k90->block_b);
    if (a.workspace == nullptr || a.workspace_bytes < w.total)
      return "segment_lse: the workspace is too small for the sm90 kernels (" + std::to_string(a.workspace_bytes) +
             " < " + std::to_string(w.total) + " bytes): size it with sm90_request (fastood._C.cuda_sm90_request)";
    if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0) return "segment_lse: workspace must be 256-byte aligned";
    std::string operands;
    const std::string err = segment_lse_sm90_aot(a, *k90, plan90, &operands);
    if (err.empty()) report("sm90 " + operands);
    return err;
  }
  if (choice.path == CudaPath::kAot) {
    const std::string err = segment_lse_aot(a, *kaot);
    if (err.empty()) report("aot");
    return err;
  }
#endif
  report("cuda");

  FwdParams p{};
  p.x = a.x;
  p.bank = a.bank;
  p.offsets = a.offsets;
  p.row_scale = a.row_scale;
  p.lse = a.lse;
  p.max0 = a.max0;
  p.argmax0 = a.argmax0;
  p.ldx = a.ldx;
  p.ldb = a.ldb;
  p.B = static_cast<int>(a.B);
  p.N = static_cast<int>(a.N);
  p.D = static_cast<int>(a.D);
  p.S = static_cast<int>(a.S);
  p.chunk = static_cast<int>(plan.chunk);
  p.split = plan.splits > 1 ? 1 : 0;
  if (p.split) {
    const WsLayout w = ws_layout(plan.splits, a.S, a.B);
    if (a.workspace == nullptr || a.workspace_bytes < w.total)
      return "segment_lse: the split workspace is missing or too small (" + std::to_string(a.workspace_bytes) +
             " < " + std::to_string(w.total) + " bytes)";
    if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0) return "segment_lse: workspace must be 256-byte aligned";
    char* base = static_cast<char*>(a.workspace);
    p.ws_m = reinterpret_cast<float*>(base + w.m_off);
    p.ws_l = reinterpret_cast<float*>(base + w.l_off);
    p.ws_arg = reinterpret_cast<int32_t*>(base + w.arg_off);
  }

  auto stream = static_cast<cudaStream_t>(a.stream);
  (void)cudaGetLastError();  // clear a stale error of this runtime so the check below is ours
  const dim3 grid(static_cast<unsigned>(cdiv(a.B, kTileB)), static_cast<unsigned>(plan.splits));
  const dim3 block(kThreads);
  const bool vec = fwd_vector_loads(a.x, a.ldx, a.bank, a.ldb, a.D);
  switch (a.dtype) {
    case DType::kFloat16:
      if (vec) segment_lse_fwd_half<__half, true><<<grid, block, 0, stream>>>(p);
      else segment_lse_fwd_half<__half, false><<<grid, block, 0, stream>>>(p);
      break;
    case DType::kBFloat16:
      if (vec) segment_lse_fwd_half<__nv_bfloat16, true><<<grid, block, 0, stream>>>(p);
      else segment_lse_fwd_half<__nv_bfloat16, false><<<grid, block, 0, stream>>>(p);
      break;
    case DType::kFloat32:
      segment_lse_fwd_f32<<<grid, block, 0, stream>>>(p);
      break;
    default:
      return "segment_lse: unknown dtype";
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error("fastood segment_lse kernel launch failed", e);

  if (p.split) {
    MergeParams mp{};
    mp.ws_m = p.ws_m;
    mp.ws_l = p.ws_l;
    mp.ws_arg = p.ws_arg;
    mp.offsets = a.offsets;
    mp.lse = a.lse;
    mp.max0 = a.max0;
    mp.argmax0 = a.argmax0;
    mp.B = p.B;
    mp.S = p.S;
    mp.chunk = p.chunk;
    mp.row_blocks = static_cast<int>(cdiv(a.B, kThreads));
    const int64_t blocks = a.S * mp.row_blocks;
    if (blocks > 2147483647) return "segment_lse: too many (segment, row block) pairs for the merge grid";
    segment_lse_merge<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(mp);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_error("fastood segment_lse merge kernel launch failed", e);
  }
  return std::string();
}

int device_sm_count(int device, std::string* err) {
  int n = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) {
    if (err) *err = cuda_error("cudaDeviceGetAttribute(MultiProcessorCount)", e);
    return -1;
  }
  return n;
}

int current_device(std::string* err) {
  int d = -1;
  const cudaError_t e = cudaGetDevice(&d);
  if (e != cudaSuccess) {
    if (err) *err = cuda_error("cudaGetDevice", e);
    return -1;
  }
  return d;
}

int runtime_version() { return CUDART_VERSION; }

}  // namespace cuda
}  // namespace fastood

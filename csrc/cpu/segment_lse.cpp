// Segmented log-sum-exp over a block of fp32 logits: see segment_lse.h.
//
// Per row: a NaN-ignoring max of every segment (and the first argmax of segment
// 0), then Σ exp(L − max) of every segment with a vectorised Cephes-style expf
// (the row is in L1/L2 by then), then max + log Σ with a vectorised logf. Two
// passes over the data are cheaper than an online rescaled sum (one exp per value
// instead of two). The row kernel is written once with GCC/Clang vector
// extensions and instantiated twice: 4 lanes for the baseline ISA of the build
// (SSE2 on x86-64, NEON on arm64) and, on x86-64, 8 lanes compiled for AVX2+FMA,
// picked at run time (no -march flags needed at build time).
#include "cpu/segment_lse.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if !defined(__GNUC__) && !defined(__clang__)
#error "fastood's CPU kernels use GCC/Clang vector extensions: build with GCC or Clang"
#endif

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in non-AVX code: all of it is inlined
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTOOD_X86_DISPATCH 1
#endif

namespace fastood {
namespace cpu {
namespace {

#define FO_INLINE inline __attribute__((always_inline))

// Native vectors of the target: 4 lanes (SSE2 / NEON) for the generic build, 8 for
// AVX2. (Wider-than-native vector extensions get scalarised around ?: — measured
// 9× slower — so each path uses its own native width.)
template <int W>
struct Vec;
// Constants are spelled out as literals: GCC builds vectors filled in a loop lane by lane.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define FO_SHUFFLE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define FO_SHUFFLE(v, ...) __builtin_shuffle(v, i{__VA_ARGS__})
#endif
template <>
struct Vec<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
  static FO_INLINE i iota() { return i{0, 1, 2, 3}; }
  // rot(v, w)[k] = v[(k + w) mod 4], for the halving steps w = 2, 1 of a horizontal reduction
  static FO_INLINE f rot(f v, int w) { return w == 2 ? FO_SHUFFLE(v, 2, 3, 0, 1) : FO_SHUFFLE(v, 1, 2, 3, 0); }
};
template <>
struct Vec<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
  static FO_INLINE i iota() { return i{0, 1, 2, 3, 4, 5, 6, 7}; }
  static FO_INLINE f rot(f v, int w) {
    return w == 4   ? FO_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3)
           : w == 2 ? FO_SHUFFLE(v, 2, 3, 4, 5, 6, 7, 0, 1)
                    : FO_SHUFFLE(v, 1, 2, 3, 4, 5, 6, 7, 0);
  }
};

constexpr float kInf = std::numeric_limits<float>::infinity();

template <int W>
struct Kernels {
  typedef typename Vec<W>::f vf;
  typedef typename Vec<W>::i vi;

  static FO_INLINE vf splat(float a) { return vf{} + a; }
  static FO_INLINE vi splati(int32_t a) { return vi{} + a; }

  static FO_INLINE vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));  // unaligned load
    return v;
  }

  // Elements [a, b) of a row of n_cols values (0 < b − a < W) as one vector padded
  // with -inf (neutral for max; exp(-inf − m) ≈ 1e-38, invisible in the sum). When
  // the row has ≥ W values, one full load of a window inside the row ending at b
  // (or starting at 0), with the lanes outside [a, b) masked: no scalar lane inserts.
  // Lane k holds row[*start + k] (or -inf).
  static FO_INLINE vf load_part(const float* row, int64_t n_cols, int64_t a, int64_t b, int64_t* start = nullptr) {
    const vf ninf = splat(-kInf);
    if (n_cols < W) {  // tiny rows only
      vf v = ninf;
      for (int64_t k = a; k < b; ++k) v[k - a] = row[k];
      if (start) *start = a;
      return v;
    }
    const int64_t ws = b >= W ? b - W : 0;
    if (start) *start = ws;
    const vi lane = Vec<W>::iota();
    const vi ka = splati(static_cast<int32_t>(a - ws)), kb = splati(static_cast<int32_t>(b - ws));
    return (lane >= ka) & (lane < kb) ? load(row + ws) : ninf;
  }

  // max that ignores a NaN in `v` (keeps `m`): the running max never becomes NaN.
  static FO_INLINE vf vmax(vf v, vf m) { return v > m ? v : m; }

  // exp(x) for x ≤ 0 (all we need: the arguments are L − max). Cephes expf:
  // x = n·ln2 + r, |r| ≤ ln2/2, exp(r) = 1 + r + r²·P(r) with P of degree 5, times
  // 2^n. Max relative error 1.3 ulp (measured against double exp on [-87, 0]).
  // x is clamped below at ln(2^-126), so -inf and underflow give 2^-126 ≈ 1e-38
  // instead of 0 (invisible in a sum that contains exp(0) = 1) and no denormal
  // ever appears. NaN in → NaN out (the clamp keeps NaN).
  static FO_INLINE vf vexp_nonpos(vf x) {
    const vf lo = splat(-87.33654475f);  // ln(2^-126)
    const vf magic = splat(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
    const vf one = splat(1.0f);
    vf xc = x < lo ? lo : x;
    vf t = xc * 1.44269504088896341f + magic;  // bits of t: bits(magic) + n, n = round(x·log2 e)
    vf fn = t - magic;
    vf r = xc - fn * 0.693359375f;  // Cody–Waite split of ln 2
    r = r - fn * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vf y = p * (r * r) + r + one;
    // 2^n = bits((n + 127) << 23) = bits((bits(t) << 23) + bits(1.0f)): the low 9 bits of bits(magic) are 0.
    vi e = (reinterpret_cast<vi>(t) << 23) + reinterpret_cast<vi>(one);
    return y * reinterpret_cast<vf>(e);
  }

  // log(x) for x ≥ 1 (all we need: x is a Σexp that contains exp(0) = 1), NaN → NaN.
  // Cephes logf: x = 2^e·f, f ∈ [√½, √2), log f = t − t²/2 + t³·P(t), t = f − 1,
  // plus e·ln 2 split in two. Max error ~1 ulp.
  static FO_INLINE vf vlog_ge1(vf x) {
    const vi bits = reinterpret_cast<vi>(x);
    vi e = (bits >> 23) - 126;  // x = 2^e · f, f ∈ [0.5, 1)
    vf f = reinterpret_cast<vf>((bits & 0x007fffff) | 0x3f000000);
    const vi small = f < 0.707106781186547524f;  // f < √½: use 2f, e − 1
    e = e + small;  // small is -1 (true) or 0
    f = f + reinterpret_cast<vf>(small & reinterpret_cast<vi>(f)) - 1.0f;
    const vf ef = __builtin_convertvector(e, vf);
    const vf z = f * f;
    vf y = splat(7.0376836292e-2f);
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y = y + ef * -2.12194440e-4f;
    y = y - 0.5f * z;
    vf r = f + y;
    r = r + ef * 0.693359375f;
    return x != x ? x : r;
  }

  // Horizontal reductions as a fixed pairwise tree: lane k with lane k + W/2, then k + W/4, …
  static FO_INLINE vf rot(vf v, int w) { return Vec<W>::rot(v, w); }

  static FO_INLINE float hmax(vf v) {  // inputs are NaN-free
    for (int w = W / 2; w >= 1; w /= 2) v = vmax(rot(v, w), v);
    return v[0];
  }

  static FO_INLINE float hsum(vf v) {
    for (int w = W / 2; w >= 1; w /= 2) v = v + rot(v, w);
    return v[0];
  }

  // Max of row[lo, hi) (hi > lo), ignoring NaN; -inf when all are -inf or NaN.
  static FO_INLINE float seg_max(const float* row, int64_t n_cols, int64_t lo, int64_t hi) {
    const float* q = row + lo;
    const int64_t n = hi - lo;
    vf m0 = splat(-kInf), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
      m0 = vmax(load(q + i), m0);
      m1 = vmax(load(q + i + W), m1);
      m2 = vmax(load(q + i + 2 * W), m2);
      m3 = vmax(load(q + i + 3 * W), m3);
    }
    for (; i + W <= n; i += W) m0 = vmax(load(q + i), m0);
    if (i < n) m1 = vmax(load_part(row, n_cols, lo + i, hi), m1);
    return hmax(vmax(vmax(m0, m1), vmax(m2, m3)));
  }

  // seg_max plus the first index (relative to lo) attaining it: per lane, the first
  // position of the lane's max (strict >), then the smallest such index among the
  // lanes that hold the overall max. 0 when every value is -inf or NaN.
  static FO_INLINE float seg_argmax(const float* row, int64_t n_cols, int64_t lo, int64_t hi, int64_t* arg) {
    const float* q = row + lo;
    const int64_t n = hi - lo;
    const vi step = splati(W);
    vf m = splat(-kInf);
    vi idx = splati(0);
    vi j = Vec<W>::iota();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      const vf v = load(q + i);
      const vi gt = v > m;
      m = gt ? v : m;
      idx = gt ? j : idx;
      j += step;
    }
    if (i < n) {
      int64_t ws = 0;
      const vf v = load_part(row, n_cols, lo + i, hi, &ws);
      j = Vec<W>::iota() + splati(static_cast<int32_t>(ws - lo));
      const vi gt = v > m;
      m = gt ? v : m;
      idx = gt ? j : idx;
    }
    const float best = hmax(m);
    int64_t first = 0;
    if (best != -kInf) {
      first = n;
      for (int k = 0; k < W; ++k)
        if (m[k] == best && idx[k] < first) first = idx[k];
    }
    *arg = first;
    return best;
  }

  // Σ exp(row[j] − m) over [lo, hi), m finite; NaN if a value is NaN.
  static FO_INLINE float seg_sumexp(const float* row, int64_t n_cols, int64_t lo, int64_t hi, float m) {
    const float* q = row + lo;
    const int64_t n = hi - lo;
    const vf mm = splat(m);
    vf a0 = splat(0.0f), a1 = a0;
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      a0 += vexp_nonpos(load(q + i) - mm);
      a1 += vexp_nonpos(load(q + i + W) - mm);
    }
    if (i + W <= n) {
      a0 += vexp_nonpos(load(q + i) - mm);
      i += W;
    }
    if (i < n) a1 += vexp_nonpos(load_part(row, n_cols, lo + i, hi) - mm);
    return hsum(a0 + a1);
  }
};

FO_INLINE int64_t first_nan(const float* q, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (std::isnan(q[j])) return j;
  return -1;
}

// One row, three phases over its segments, so that no phase waits on the latency
// of the previous segment's result (max → Σexp → log are long dependency chains;
// done segment by segment they serialise): all maxima (+ argmax of segment 0),
// then all Σ exp(L − max) (the row is in L2 by now), then the logs.
// `scratch` holds 2·S floats.
template <int W>
FO_INLINE void reduce_row(const float* p, int64_t n_cols, const int64_t* off, int64_t S, float* lse, int64_t lse_cs,
                          float* max0, int64_t* arg0, float* scratch) {
  using K = Kernels<W>;
  using vf = typename K::vf;
  float* smax = scratch;
  float* ssum = scratch + S;
  int64_t first = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t lo = off[s], hi = off[s + 1];
    float m;
    if (hi - lo <= 1) {
      m = hi > lo ? p[lo] : -kInf;  // n = 1: may be NaN, handled below
    } else if (s == 0 && arg0) {
      m = K::seg_argmax(p, n_cols, lo, hi, &first);
    } else {
      m = K::seg_max(p, n_cols, lo, hi);  // NaN-free
    }
    smax[s] = m;
  }
  for (int64_t s = 0; s < S; ++s) {
    const int64_t lo = off[s], hi = off[s + 1];
    const float m = smax[s];
    ssum[s] = (hi - lo >= 2 && std::isfinite(m)) ? K::seg_sumexp(p, n_cols, lo, hi, m) : 1.0f;
  }
  // lse = max + log Σ, W segments at a time (Σ = 1 where the phase above skipped: then lse = max,
  // which is right for empty and one-value segments); then the non-finite maxima of
  // longer segments: +inf stays, -inf stays, unless a NaN is there.
  int64_t s = 0;
  for (; s + W <= S; s += W) {
    const vf out = K::load(smax + s) + K::vlog_ge1(K::load(ssum + s));
    for (int k = 0; k < W; ++k) lse[(s + k) * lse_cs] = out[k];
  }
  if (s < S) {
    vf mv = K::splat(0.0f), sv = K::splat(1.0f);
    for (int64_t k = 0; k < S - s; ++k) {
      mv[k] = smax[s + k];
      sv[k] = ssum[s + k];
    }
    const vf out = mv + K::vlog_ge1(sv);
    for (int64_t k = 0; k < S - s; ++k) lse[(s + k) * lse_cs] = out[k];
  }
  for (s = 0; s < S; ++s) {
    const int64_t lo = off[s], n = off[s + 1] - lo;
    if (n >= 2 && !std::isfinite(smax[s]) && first_nan(p + lo, n) >= 0)
      lse[s * lse_cs] = std::numeric_limits<float>::quiet_NaN();
  }
  // segment 0: max and first argmax, torch semantics (a NaN wins, at its first position)
  const int64_t n0 = off[1] - off[0];
  const float out0 = lse[0];
  if (n0 == 0) {
    *max0 = -kInf;
    first = 0;
  } else if (std::isnan(out0)) {
    *max0 = std::numeric_limits<float>::quiet_NaN();
    first = first_nan(p + off[0], n0);
  } else {
    *max0 = smax[0];  // n0 == 1: the value itself, first = 0
  }
  if (arg0) *arg0 = first;
}

using RowFn = void (*)(const float*, int64_t, const int64_t*, int64_t, float*, int64_t, float*, int64_t*, float*);

void row_generic(const float* p, int64_t n_cols, const int64_t* off, int64_t S, float* lse, int64_t lse_cs,
                 float* max0, int64_t* arg0, float* scratch) {
  reduce_row<4>(p, n_cols, off, S, lse, lse_cs, max0, arg0, scratch);
}

#ifdef FASTOOD_X86_DISPATCH
__attribute__((target("avx2,fma"))) void row_avx2(const float* p, int64_t n_cols, const int64_t* off, int64_t S,
                                                   float* lse, int64_t lse_cs, float* max0, int64_t* arg0,
                                                   float* scratch) {
  reduce_row<8>(p, n_cols, off, S, lse, lse_cs, max0, arg0, scratch);
}

bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

Isa resolve(Isa isa) {
#ifdef FASTOOD_X86_DISPATCH
  if (isa == Isa::Auto) return cpu_has_avx2_fma() ? Isa::Avx2 : Isa::Generic;
  return isa;
#else
  return isa == Isa::Avx2 ? Isa::Avx2 : Isa::Generic;
#endif
}

}  // namespace

bool isa_supported(Isa isa) {
  if (isa != Isa::Avx2) return true;
#ifdef FASTOOD_X86_DISPATCH
  return cpu_has_avx2_fma();
#else
  return false;
#endif
}

const char* resolved_isa_name(Isa isa) { return resolve(isa) == Isa::Avx2 ? "avx2-fma" : "generic"; }

void segment_lse_block(const SegmentLseBlock& b, int num_threads, Isa isa) {
  RowFn fn = row_generic;
#ifdef FASTOOD_X86_DISPATCH
  if (resolve(isa) == Isa::Avx2 && cpu_has_avx2_fma()) fn = row_avx2;
#else
  (void)isa;
#endif
  const int64_t rows = b.rows;
  if (rows <= 0 || b.n_segments <= 0) return;
  const int64_t S = b.n_segments;
#ifdef _OPENMP
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt) if (nt > 1 && rows > 1)
#else
  (void)num_threads;
#endif
  {
    std::vector<float> scratch(static_cast<size_t>(2 * S));
    // Dynamic chunks: a preempted thread (shared CPUs) does not hold the others up.
    // Rows are independent, so the result does not depend on the schedule.
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t r = 0; r < rows; ++r) {
      fn(b.logits + r * b.logits_row_stride, b.n_cols, b.offsets, S, b.lse + r * b.lse_row_stride, b.lse_col_stride,
         b.max0 + r * b.max0_stride, b.argmax0 ? b.argmax0 + r * b.argmax0_stride : nullptr, scratch.data());
    }
  }
}

}  // namespace cpu
}  // namespace fastood

// The fused detector head on the segmented-LSE kernel: what the TensorRT plugin runs
// (csrc/trt/), also bound in fastood._C so GPU tests can check it without TensorRT.
//
//   1. row_scale[i] = (1/τ) / ||x_i||   (or 1/τ without normalisation)   — one warp per row
//   2. offsets      = [0, K, K+m, …, K+G·m] (NegLabel, m = (N−K) // G) or [0, K] (MCM)
//   3. segment_lse over the kept bank rows (segment_lse.cu)
//   4. score: NegLabel mean_g sigmoid(LSE_id − LSE_g); MCM exp(max/T − LSE_id);
//      pred = the segment-0 argmax as int32; a non-finite row scale (zero-norm row)
//      gives score NaN, pred 0.
// Everything lives in one caller-provided workspace; no allocation, no host sync, so
// it can be captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "fastood_cuda.cuh"

namespace fastood {
namespace cuda {
namespace {

int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// One warp per row: row_scale = inv_t / ||x_i|| (fp32 sum of squares).
template <typename T>
__global__ void row_scale_kernel(const T* __restrict__ x, int64_t ldx, int64_t B, int64_t D, float inv_t,
                                 int normalize, float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= B) return;
  if (!normalize) {
    if (lane == 0) out[row] = inv_t;
    return;
  }
  const T* xr = x + row * ldx;
  float ss = 0.0f;
  for (int64_t d = lane; d < D; d += 32) {
    const float v = to_float(xr[d]);
    ss = fmaf(v, v, ss);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) out[row] = inv_t / sqrtf(ss);  // ss = 0 → inf: flagged by the score kernel
}

__global__ void offsets_kernel(int64_t* __restrict__ off, int64_t S, int64_t K, int64_t m) {
  for (int64_t k = threadIdx.x; k <= S; k += blockDim.x) off[k] = (k == 0) ? 0 : K + (k - 1) * m;
}

__device__ __forceinline__ float sigmoid_stable(float z) {
  if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
  const float e = expf(z);
  return e / (1.0f + e);
}

__global__ void score_kernel(const float* __restrict__ lse, const float* __restrict__ max0,
                             const int64_t* __restrict__ arg, const float* __restrict__ row_scale, int64_t B,
                             int64_t S, int method, float* __restrict__ score, int32_t* __restrict__ pred) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  const bool ok = isfinite(row_scale[i]);
  float s;
  if (!ok) {
    s = NAN;
  } else if (method == static_cast<int>(HeadMethod::kMcm)) {
    s = expf(max0[i] - lse[i * S]);
  } else {
    const float a = lse[i * S];
    float acc = 0.0f;
    for (int64_t g = 1; g < S; ++g) acc += sigmoid_stable(a - lse[i * S + g]);
    s = acc / static_cast<float>(S - 1);
  }
  score[i] = s;
  if (pred != nullptr) pred[i] = ok ? static_cast<int32_t>(arg[i]) : 0;
}

struct HeadLayout {
  int64_t off, row_scale, lse, max0, arg, split, fixed;
};

HeadLayout head_layout(int64_t B, int64_t S) {
  HeadLayout h{};
  h.off = 0;
  h.row_scale = h.off + align256((S + 1) * 8);
  h.lse = h.row_scale + align256(B * 4);
  h.max0 = h.lse + align256(B * S * 4);
  h.arg = h.max0 + align256(B * 4);
  h.split = h.arg + align256(B * 8);
  h.fixed = h.split;
  return h;
}

int64_t used_rows(const HeadConfig& cfg, int64_t N) {
  if (cfg.method == HeadMethod::kMcm) return cfg.num_id;
  const int64_t m = (N - cfg.num_id) / cfg.groups;
  return cfg.num_id + cfg.groups * m;
}

std::string err_of(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

}  // namespace

std::string head_check(const HeadConfig& cfg, int64_t N) {
  if (!(cfg.temperature > 0.0f) || !std::isfinite(cfg.temperature))
    return "temperature must be a positive finite number";
  if (cfg.num_id < 1) return "num_id must be >= 1";
  if (cfg.method == HeadMethod::kMcm) {
    if (cfg.num_id > N) return "num_id (" + std::to_string(cfg.num_id) + ") exceeds the bank rows (" + std::to_string(N) + ")";
    return std::string();
  }
  if (cfg.method != HeadMethod::kNegLabel) return "method must be neglabel or mcm";
  if (cfg.num_id >= N)
    return "num_id (" + std::to_string(cfg.num_id) + ") must be < the bank rows (" + std::to_string(N) +
           ") for neglabel: the bank needs negatives";
  if (cfg.groups < 1 || cfg.groups > N - cfg.num_id)
    return "groups must be in [1, " + std::to_string(N - cfg.num_id) + "], got " + std::to_string(cfg.groups);
  return std::string();
}

int64_t head_segments(const HeadConfig& cfg) { return cfg.method == HeadMethod::kMcm ? 1 : 1 + cfg.groups; }

namespace {
// The CUDA C++ / portable AOT kernels' part: at most one split per 64-column tile, capped
// like plan_splits. Grows with B.
int64_t portable_split_bound(const HeadConfig& cfg, int64_t B, int64_t N) {
  const int64_t S = head_segments(cfg);
  const int64_t tiles = (std::max<int64_t>(used_rows(cfg, N), 1) + kTileN - 1) / kTileN;
  return std::min(kHeadSplitWorkspaceBytes, split_workspace_bytes(tiles, S, std::max<int64_t>(B, 1)));
}
}  // namespace

int64_t head_workspace_bytes(const HeadConfig& cfg, int64_t B, int64_t N) {
  // fixed part + a bound on the split workspace that holds for every GPU and every path
  // segment_lse may take: the portable bound, or the sm90 sequence's (colseg, flags, its
  // partials capped alike) when this build embeds sm90 kernels. Both grow with B.
  const int64_t S = head_segments(cfg);
  B = std::max<int64_t>(B, 1);
  const int64_t sm90 = sm90_workspace_bound(B, std::max<int64_t>(used_rows(cfg, N), 1), S, kHeadSplitWorkspaceBytes);
  return head_layout(B, S).fixed + std::max(portable_split_bound(cfg, B, N), sm90);
}

std::string head_score(const HeadArgs& a) {
  std::string why = head_check(a.cfg, a.N);
  if (!why.empty()) return "fastood head: " + why;
  if (a.B < 1 || a.D < 1) return "fastood head: empty batch or zero feature width";
  if (!a.x || !a.bank || !a.score || !a.workspace) return "fastood head: a required device pointer is null";
  if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0) return "fastood head: workspace must be 256-byte aligned";
  const int64_t S = head_segments(a.cfg);
  const HeadLayout lay = head_layout(a.B, S);
  const int64_t need = head_workspace_bytes(a.cfg, a.B, a.N);
  if (a.workspace_bytes < need)
    return "fastood head: workspace too small (" + std::to_string(a.workspace_bytes) + " < " + std::to_string(need) +
           " bytes)";
  int sms = a.sm_count;
  if (sms <= 0) {
    std::string e;
    const int dev = current_device(&e);
    sms = dev >= 0 ? device_sm_count(dev, &e) : -1;
    if (sms <= 0) return "fastood head: " + e;
  }
  const int64_t n_used = used_rows(a.cfg, a.N);
  // Plan inside the B-dependent budget (not the whole buffer): the same inputs always give
  // the same split, hence bitwise the same scores, whatever workspace the caller reserved.
  std::string occ_err;
  const int per_sm = fwd_blocks_per_sm(a.dtype, fwd_vector_loads(a.x, a.ldx, a.bank, a.ldb, a.D), &occ_err);
  if (per_sm < 1) return "fastood head: " + occ_err;
  const SplitPlan plan = plan_splits(a.B, n_used, S, sms, per_sm, 0, portable_split_bound(a.cfg, a.B, a.N));
  // The sm90 sequence's splits, fitted to the same B-dependent budget (false: no sm90 set
  // for this device and dtype, so segment_lse will not take that path).
  Sm90Request r90;
  const bool sm90 = sm90_request(a.dtype, a.B, n_used, S, sms, 0, need - lay.fixed, &r90);

  char* base = static_cast<char*>(a.workspace);
  auto* off = reinterpret_cast<int64_t*>(base + lay.off);
  auto* rs = reinterpret_cast<float*>(base + lay.row_scale);
  auto* lse = reinterpret_cast<float*>(base + lay.lse);
  auto* max0 = reinterpret_cast<float*>(base + lay.max0);
  auto* arg = reinterpret_cast<int64_t*>(base + lay.arg);
  auto stream = static_cast<cudaStream_t>(a.stream);
  const float inv_t = 1.0f / a.cfg.temperature;

  (void)cudaGetLastError();
  const int64_t m = a.cfg.method == HeadMethod::kMcm ? 0 : (a.N - a.cfg.num_id) / a.cfg.groups;
  offsets_kernel<<<1, 128, 0, stream>>>(off, S, a.cfg.num_id, m);
  constexpr int kRowsPerBlock = 8;  // 8 warps
  const unsigned rs_blocks = static_cast<unsigned>((a.B + kRowsPerBlock - 1) / kRowsPerBlock);
  const int norm = a.cfg.normalize ? 1 : 0;
  switch (a.dtype) {
    case DType::kFloat32:
      row_scale_kernel<float><<<rs_blocks, 32 * kRowsPerBlock, 0, stream>>>(static_cast<const float*>(a.x), a.ldx,
                                                                           a.B, a.D, inv_t, norm, rs);
      break;
    case DType::kFloat16:
      row_scale_kernel<__half><<<rs_blocks, 32 * kRowsPerBlock, 0, stream>>>(static_cast<const __half*>(a.x), a.ldx,
                                                                            a.B, a.D, inv_t, norm, rs);
      break;
    case DType::kBFloat16:
      row_scale_kernel<__nv_bfloat16><<<rs_blocks, 32 * kRowsPerBlock, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(a.x), a.ldx, a.B, a.D, inv_t, norm, rs);
      break;
    default:
      return "fastood head: unknown dtype";
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return err_of("fastood head: row-scale kernel launch failed", e);

  SegmentLseArgs s;
  s.dtype = a.dtype;
  s.x = a.x;
  s.ldx = a.ldx;
  s.bank = a.bank;
  s.ldb = a.ldb;
  s.B = a.B;
  s.N = n_used;
  s.D = a.D;
  s.offsets = off;
  s.S = S;
  s.row_scale = rs;
  s.lse = lse;
  s.max0 = max0;
  s.argmax0 = arg;
  s.plan = plan;
  if (sm90) {
    s.sm90_programs = r90.programs;
    s.sm90_splits0 = r90.splits0;
  }
  s.workspace = base + lay.split;  // the split part: whichever path runs plans inside it
  s.workspace_bytes = need - lay.fixed;
  s.stream = a.stream;
  s.path = a.path;
  why = segment_lse(s);
  if (!why.empty()) return "fastood head: " + why;

  score_kernel<<<static_cast<unsigned>((a.B + 127) / 128), 128, 0, stream>>>(
      lse, max0, arg, rs, a.B, S, static_cast<int>(a.cfg.method), a.score, a.pred);
  e = cudaGetLastError();
  if (e != cudaSuccess) return err_of("fastood head: score kernel launch failed", e);
  return std::string();
}

}  // namespace cuda
}  // namespace fastood

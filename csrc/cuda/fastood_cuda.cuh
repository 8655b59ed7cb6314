// Host API of fastood's CUDA kernels (csrc/cuda/*.cu).
//
// This header is plain C++17 — no CUDA syntax, no CUDA headers — so that the
// pybind11 bindings (csrc/bindings.cpp, built by the host compiler) and the
// TensorRT plugin (csrc/trt/) can include it. Device pointers and the CUDA
// stream travel as `void*`; errors come back as a non-empty std::string.
//
// The one primitive (shared/DESIGN.md): for features x (B×D), a bank (N×D),
// column segments 0 = off[0] ≤ off[1] ≤ … ≤ off[S] = N and a per-row scale r,
//
//   L[i, j]   = r[i] · <x_i, bank_j>                                  (natural-log units)
//   lse[i, s] = log Σ_{j ∈ [off[s], off[s+1])} exp(L[i, j])            (−inf when empty)
//   max0[i]   = max_{j ∈ seg 0} L[i, j],   argmax0[i] = first maximiser (0 when seg 0 is empty)
//
// computed without writing the B×N logits: 128-row × 64-column tiles of the GEMM
// (fp16/bf16 on tensor cores through WMMA, fp32 with IEEE FMAs on the SIMT cores),
// an fp32 online (running max, rescaled sum) state per row in base 2, and, for small
// batches, a split of the columns with a second, deterministic merge kernel.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/cuda_path.h"

namespace fastood {
namespace cuda {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Tile shape of the segmented-LSE kernel (rows of x per block, bank columns per tile).
// Split chunks are multiples of kTileN so that no tile straddles two splits.
constexpr int64_t kTileB = 128;
constexpr int64_t kTileN = 64;
// Largest N the kernel indexes with 32-bit column numbers.
constexpr int64_t kMaxColumns = (int64_t{1} << 31) - 1 - 2 * kTileN;
// Default cap on the split workspace (partial m, l per split, segment and row).
constexpr int64_t kDefaultSplitWorkspaceBytes = int64_t{64} << 20;
// The fused head's (TensorRT plugin's) cap: TensorRT reserves it for the largest batch.
constexpr int64_t kHeadSplitWorkspaceBytes = int64_t{16} << 20;

// How the columns are split. splits == 1: single pass, no workspace, no merge kernel.
struct SplitPlan {
  int64_t splits = 1;
  int64_t chunk = 0;            // columns per split (multiple of kTileN), == N rounded up when splits == 1
  int64_t workspace_bytes = 0;  // bytes the split path needs (0 when splits == 1)
};

// Pick the split of N columns for a batch of B rows and S segments.
//   num_splits > 0 forces that many splits (rounded to whole tiles, so possibly fewer);
//   num_splits == 0 splits only when the ceil(B / kTileB) row blocks cannot fill the GPU,
//   i.e. are fewer than sm_count · blocks_per_sm (one full wave of resident blocks), and
//   then into ceil(sm_count · blocks_per_sm / row_blocks) splits, never below one tile
//   per split. blocks_per_sm is what the occupancy API reports for the forward kernel
//   that will run (fwd_blocks_per_sm); values < 1 count as 1.
// The workspace never exceeds max_workspace_bytes (the split count is lowered to fit;
// a single pass needs none).
SplitPlan plan_splits(int64_t B, int64_t N, int64_t S, int sm_count, int blocks_per_sm, int64_t num_splits,
                      int64_t max_workspace_bytes = kDefaultSplitWorkspaceBytes);

// True when segment_lse launches the 16-byte vector-load variant of the forward kernel
// for these operands (both base pointers 16-byte aligned, both row strides and D
// multiples of 8 elements); its register count, hence occupancy, differs.
bool fwd_vector_loads(const void* x, int64_t ldx, const void* bank, int64_t ldb, int64_t D);

// Resident blocks per SM of the forward kernel segment_lse launches for (dtype, vec) on
// the current device: cudaOccupancyMaxActiveBlocksPerMultiprocessor (registers, shared
// memory and the block limits of the real compile). <= 0 on error, with *err set.
int fwd_blocks_per_sm(DType dtype, bool vec, std::string* err = nullptr);

// Exact workspace bytes of the split path for `splits` splits (0 when splits <= 1).
int64_t split_workspace_bytes(int64_t splits, int64_t S, int64_t B);

// Byte offsets in the split workspace (each region 256-byte aligned): partial maxima m and
// sums l, both (split, segment, row) fp32; segment-0 argmax (split, row) int32; the first
// segment of each split (split,) int32 (for the Triton kernel, see segment_lse_aot.h).
struct WsLayout {
  int64_t m_off = 0, l_off = 0, arg_off = 0, starts_off = 0, total = 0;
};
WsLayout split_workspace_layout(int64_t splits, int64_t S, int64_t B);

// Enqueue out[p] = first s with offsets[s+1] > p·chunk (S if none) for p < splits:
// torch.searchsorted(offsets[1:], p·chunk, right=True). "" on success.
std::string launch_split_starts(const int64_t* offsets, int64_t S, int64_t chunk, int64_t splits, int32_t* out,
                                void* stream);

struct SegmentLseArgs {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;     // (B, D), unit stride along D, row stride ldx (elements, >= 0)
  int64_t ldx = 0;
  const void* bank = nullptr;  // (N, D), unit stride along D, row stride ldb (elements, >= 0)
  int64_t ldb = 0;
  int64_t B = 0, N = 0, D = 0;
  const int64_t* offsets = nullptr;  // device, (S+1,), validated by the caller
  int64_t S = 0;
  const float* row_scale = nullptr;  // device, (B,)
  float* lse = nullptr;              // device, (B, S) row-major
  float* max0 = nullptr;             // device, (B,)
  int64_t* argmax0 = nullptr;        // device, (B,) or nullptr when not wanted
  SplitPlan plan;                    // from plan_splits (the CUDA C++ and portable AOT kernels)
  // The Hopper sequence's requests, from sm90_request: the hot kernel's stream-K programs and
  // the segment-0 kernel's splits; 0 = the launcher's heuristic on the current device (the
  // workspace must then hold it).
  int64_t sm90_programs = 0, sm90_splits0 = 0;
  void* workspace = nullptr;         // device, 256-byte aligned, >= the bytes of the path that runs:
                                     // max(plan.workspace_bytes, sm90_request's) covers every path
  int64_t workspace_bytes = 0;
  void* stream = nullptr;            // cudaStream_t
  std::string* path = nullptr;       // out (optional): the kernels that ran, e.g. "sm90 tma",
                                     // "aot (sm90: …)", "cuda (sm90: …; aot: …)"
};

// Validate the arguments and enqueue the kernels on `stream`. Returns "" on success,
// else a message (bad argument, a workspace too small for the path that would run, or the
// CUDA error of a failed launch). The path: choose_cuda_path (cuda_path.h).
std::string segment_lse(const SegmentLseArgs& a);

// ---- Workspace of the Hopper sequence (segment_lse_sm90_aot, segment_lse_aot.h) ----------
// colseg (N int32) + row-block flags + the hot kernel's stream-K boundary slots (bflag,
// part_seg, part_v: P + 1 boundaries) + segment 0's partial (m, l, argmax) per segment-0
// split, each region 256-byte aligned (sm90_workspace_layout, segment_lse_aot.h).
struct Sm90Request {
  int64_t programs = 1, splits0 = 1;  // requests as segment_lse's sm90_programs / sm90_splits0
  int64_t workspace_bytes = 0;        // sm90_workspace_layout(...).total for them
};
// The request segment_lse's sm90 path takes for (dtype, B, N, S) on the current device: the
// hot kernel's stream-K programs (sm90_choose_programs: two per SM, at most one per tile) and
// segment 0's splits — num_splits > 0 forces those (as the Python launcher's num_splits does),
// else the launcher's heuristic (sm90_choose_splits) on sm_count SMs; then the larger of the
// two partial buffers shrinks until the workspace is <= max_bytes (colseg and flags always
// fit: they are counted even when max_bytes is smaller). S does not change the layout. false, with the reason in
// *why, when this build embeds no sm90 kernel set for the device and dtype (then no sm90
// workspace is needed).
bool sm90_request(DType dtype, int64_t B, int64_t N, int64_t S, int sm_count, int64_t num_splits, int64_t max_bytes,
                  Sm90Request* out, std::string* why = nullptr);
// A device-independent bound, over every sm90 kernel set this build embeds, on the bytes the
// sm90 path needs when its partial buffers are capped at max_partials_bytes: colseg + flags +
// min(max_partials_bytes, boundary slots of one program per hot tile + segment-0 partials with
// one split per column tile). Non-decreasing in B;
// 0 when no sm90 set is embedded. sm90_request(..., max_bytes = this bound) always fits.
int64_t sm90_workspace_bound(int64_t B, int64_t N, int64_t S, int64_t max_partials_bytes);

// ---- The fused detector head (what the TensorRT plugin runs) ------------------------
//
// method kNegLabel: bank = [ID (K) | negatives], groups G, the last (N−K) mod G negatives
//   dropped; score = mean_g sigmoid(LSE_id − LSE_g) (shared/SPEC.md §1).
// method kMcm: only the first K bank rows are used; score = exp(max/T − LSE) (SPEC §2).
// pred = first argmax over the K ID cosines (int32). Logits = cos / temperature, with
// cos = x̂·t (x̂ = x/||x|| when normalize, else x). A zero-norm row (with normalize)
// gives a NaN score and pred 0.
enum class HeadMethod : int32_t { kNegLabel = 0, kMcm = 1 };

struct HeadConfig {
  HeadMethod method = HeadMethod::kNegLabel;
  int64_t num_id = 0;
  int64_t groups = 1;
  float temperature = 0.01f;
  bool normalize = true;
};

// "" when the config is valid for a bank of N rows, else the reason.
std::string head_check(const HeadConfig& cfg, int64_t N);
// Number of segments the head reduces (1 + G for NegLabel, 1 for MCM).
int64_t head_segments(const HeadConfig& cfg);
// Workspace bytes for a batch of B rows. Non-decreasing in B and independent of the GPU,
// so the size reserved for the largest batch (TensorRT's getWorkspaceSize at the profile's
// max) also covers every smaller batch: head_score plans its column split inside
// head_workspace_bytes(cfg, B, N) for the B it runs. The split part is the larger of the
// CUDA C++ / portable bound and, when sm90 kernels are embedded, sm90_workspace_bound
// (both with partials capped at kHeadSplitWorkspaceBytes): whichever path runs fits.
int64_t head_workspace_bytes(const HeadConfig& cfg, int64_t B, int64_t N);

struct HeadArgs {
  DType dtype = DType::kFloat32;
  const void* x = nullptr;  // (B, D) contiguous rows (row stride ldx)
  int64_t ldx = 0;
  const void* bank = nullptr;  // (N, D) row stride ldb
  int64_t ldb = 0;
  int64_t B = 0, N = 0, D = 0;
  HeadConfig cfg;
  float* score = nullptr;   // device, (B,)
  int32_t* pred = nullptr;  // device, (B,) or nullptr
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;  // >= head_workspace_bytes(cfg, B, N)
  int sm_count = 0;  // <= 0: query the current device
  void* stream = nullptr;
  std::string* path = nullptr;  // out (optional): segment_lse's path (SegmentLseArgs::path)
};

std::string head_score(const HeadArgs& a);

// SM count of a device (<= 0 on error, with the message in *err when given).
int device_sm_count(int device, std::string* err = nullptr);
// The calling thread's current CUDA device (-1 on error).
int current_device(std::string* err = nullptr);
// CUDA runtime version this code was built against (e.g. 13000).
int runtime_version();

}  // namespace cuda
}  // namespace fastood

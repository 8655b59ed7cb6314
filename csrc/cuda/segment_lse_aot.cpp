// segment_lse on the AOT-compiled Triton kernels (segment_lse_aot.h).
#include "cuda/segment_lse_aot.h"
#include "cuda/split_plan.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fastood {
namespace cuda {
namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned(const void* p, int64_t ld, int64_t D) {
  // The images were compiled with tt.divisibility 16 on every pointer, D, the row
  // strides and chunk: 16-byte-aligned bases, multiples of 16 elements.
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % 16 == 0 && D % 16 == 0;
}

}  // namespace

std::string segment_lse_aot_applicable(const SegmentLseArgs& a, const SegmentLseAotKernels& k) {
  if (a.dtype != k.dtype) return "dtype differs from the compiled kernels'";
  if (k.block_b < 1 || k.merge_block < 1 || k.chunk_align < 16 || k.chunk_align % 16 != 0)
    return "incomplete kernel set";
  for (int s = 0; s < 2; ++s)
    for (int g = 0; g < 2; ++g)
      if (k.fwd[s][g] == nullptr) return "incomplete kernel set";
  if (k.merge[0] == nullptr || k.merge[1] == nullptr) return "incomplete kernel set";
  if (!aligned(a.x, a.ldx, a.D) || !aligned(a.bank, a.ldb, a.D))
    return "operands not 16-aligned (base, row stride or D)";
  const int64_t i32max = (int64_t{1} << 31) - 1;
  if (a.B > i32max || a.N > i32max || a.D > i32max || a.S > i32max || a.ldx > i32max || a.ldb > i32max)
    return "sizes beyond the kernel's int32 arguments";
  if (cdiv(a.B, k.merge_block) > 65535) return "too many rows for the merge grid's y dimension";
  return std::string();
}

std::string segment_lse_aot(const SegmentLseArgs& a, const SegmentLseAotKernels& k) {
  std::string why = segment_lse_aot_applicable(a, k);
  if (!why.empty()) return "segment_lse_aot: " + why;
  if (a.plan.splits < 1) return "segment_lse_aot: invalid split plan";
  // The Triton launcher: chunk = cdiv(cdiv(N, splits), align)·align, splits = cdiv(N, chunk).
  const int64_t chunk = cdiv(cdiv(a.N, a.plan.splits), k.chunk_align) * k.chunk_align;
  const int64_t splits = cdiv(a.N, chunk);
  const bool split = splits > 1;
  const bool argmax = a.argmax0 != nullptr;
  using aot::TritonArg;

  const void* starts = a.lse;  // unused unless split (SPLIT is a constexpr): any valid pointer
  const void* ws_m = a.lse;
  const void* ws_l = a.lse;
  const void* ws_arg = a.lse;
  if (split) {
    const WsLayout w = split_workspace_layout(splits, a.S, a.B);
    if (a.workspace == nullptr || a.workspace_bytes < w.total) return "segment_lse_aot: the split workspace is too small";
    char* base = static_cast<char*>(a.workspace);
    ws_m = base + w.m_off;
    ws_l = base + w.l_off;
    ws_arg = argmax ? static_cast<const void*>(base + w.arg_off) : ws_m;
    starts = base + w.starts_off;
    why = launch_split_starts(a.offsets, a.S, chunk, splits, static_cast<int32_t*>(const_cast<void*>(starts)), a.stream);
    if (!why.empty()) return why;
  }
  const void* arg0 = argmax ? static_cast<const void*>(a.argmax0) : a.max0;  // never written without argmax
  const std::vector<TritonArg> fwd_args = {
      TritonArg::ptr(a.x), TritonArg::ptr(a.bank), TritonArg::ptr(a.offsets), TritonArg::ptr(a.row_scale),
      TritonArg::ptr(starts), TritonArg::ptr(a.lse), TritonArg::ptr(a.max0), TritonArg::ptr(arg0),
      TritonArg::ptr(ws_m), TritonArg::ptr(ws_l), TritonArg::ptr(ws_arg),
      TritonArg::i32(static_cast<int32_t>(a.B)), TritonArg::i32(static_cast<int32_t>(a.N)),
      TritonArg::i32(static_cast<int32_t>(a.D)), TritonArg::i32(static_cast<int32_t>(a.S)),
      TritonArg::i32(static_cast<int32_t>(chunk)), TritonArg::i32(static_cast<int32_t>(a.ldx)),
      TritonArg::i32(static_cast<int32_t>(a.ldb))};
  why = aot::launch(*k.fwd[split][argmax], static_cast<unsigned>(cdiv(a.B, k.block_b)), static_cast<unsigned>(splits),
                    1, fwd_args, nullptr, a.stream);
  if (!why.empty()) return "segment_lse_aot: " + why;
  if (split) {
    const std::vector<TritonArg> merge_args = {
        TritonArg::ptr(ws_m), TritonArg::ptr(ws_l), TritonArg::ptr(ws_arg), TritonArg::ptr(a.offsets),
        TritonArg::ptr(a.lse), TritonArg::ptr(a.max0), TritonArg::ptr(arg0),
        TritonArg::i32(static_cast<int32_t>(a.B)), TritonArg::i32(static_cast<int32_t>(a.S)),
        TritonArg::i32(static_cast<int32_t>(chunk))};
    why = aot::launch(*k.merge[argmax], static_cast<unsigned>(a.S), static_cast<unsigned>(cdiv(a.B, k.merge_block)), 1,
                      merge_args, nullptr, a.stream);
    if (!why.empty()) return "segment_lse_aot: " + why;
  }
  return std::string();
}

// ------------------------------------------------------------------------------ sm90
namespace {

int64_t align256(int64_t v) { return (v + 255) / 256 * 256; }

int64_t elem_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

using Named = std::vector<std::pair<std::string, aot::TritonArg>>;

// Order `named` by k's parameters (pack_named checks every one has a value) and launch.
std::string launch_named(const aot::TritonKernelImage& k, unsigned gx, unsigned gy, unsigned gz, const Named& named,
                         void* stream) {
  aot::PackedParams check;
  std::vector<aot::TritonArg> ordered;
  std::string why = aot::pack_named(k, named, nullptr, nullptr, &check, &ordered);
  if (!why.empty()) return why;
  return aot::launch(k, gx, gy, gz, ordered, nullptr, stream);
}

constexpr uint32_t kNegInfBits = 0xff800000u;  // −inf as fp32

}  // namespace

Sm90Plan sm90_plan(int64_t programs, int64_t splits0) {
  Sm90Plan p;
  p.programs = programs < 1 ? 1 : programs;
  p.splits0 = splits0 < 1 ? 1 : splits0;
  return p;
}

int64_t sm90_choose_programs(int64_t B, int64_t N, int sm_count, int64_t block_b, int64_t block_n) {
  // The launcher's default on the capped TMA path: two resident programs per SM.
  return stream_k_programs(cdiv(B, block_b), cdiv(std::max<int64_t>(N, 1), block_n), 2 * int64_t{std::max(sm_count, 1)});
}

int64_t sm90_choose_splits(int64_t B, int64_t cols, int64_t S, int sm_count, int64_t block_b, int64_t block_n) {
  // sol_splits of the Python launcher: the wave rule (split_plan.h) on the TMA path's two
  // resident blocks per SM, within a 64 MB split workspace (m and l per split, segment, row).
  const int64_t cap = std::max<int64_t>(1, (int64_t{64} << 20) / (B * S * 8));
  return wave_splits(cdiv(B, block_b), cdiv(std::max<int64_t>(cols, 1), block_n), std::max(sm_count, 1), 2, cap);
}

Sm90WsLayout sm90_workspace_layout(const Sm90Plan& p, int64_t B, int64_t N, int64_t block_b) {
  Sm90WsLayout w;
  const int64_t slots = p.programs + 1;  // boundaries b = 0..P (the launcher's P + 1 entries)
  w.colseg_off = 0;
  w.flag_off = align256(N * 4);
  w.bflag_off = w.flag_off + align256(cdiv(B, block_b) * 4);
  w.part_seg_off = w.bflag_off + align256(slots * 4);
  w.part_v_off = w.part_seg_off + align256(2 * slots * 4);
  int64_t end = w.part_v_off + align256(2 * slots * block_b * 4);
  if (p.splits0 > 1) {
    w.m0_off = end;
    w.l0_off = w.m0_off + align256(p.splits0 * B * 4);
    w.arg0_off = w.l0_off + align256(p.splits0 * B * 4);
    end = w.arg0_off + align256(p.splits0 * B * 4);
  }
  w.total = end;
  return w;
}

bool sm90_tma_ok(const void* base, int64_t ld, int64_t D, int64_t elem_size) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (ld * elem_size) % 16 == 0 && D * elem_size >= 16;
}

std::string segment_lse_sm90_aot_applicable(const SegmentLseArgs& a, const SegmentLseSm90AotKernels& k) {
  if (a.dtype != k.dtype) return "dtype differs from the compiled kernels'";
  if (k.block_b < 1 || k.block_n < 1 || k.merge_block < 1) return "incomplete kernel set";
  for (int t = 0; t < 2; ++t) {
    if (k.hot[t] == nullptr) return "incomplete kernel set";
    for (int v = 0; v < 2; ++v)
      if (k.seg0[t][v][0] == nullptr || k.seg0[t][v][1] == nullptr) return "incomplete kernel set";
  }
  for (int v = 0; v < 2; ++v)
    if (k.exact[v] == nullptr || k.seg0_merge[v] == nullptr) return "incomplete kernel set";
  // The pointer images were compiled with tt.divisibility 16 on the pointers, D and the
  // row strides (their aot_specs): the same condition as the portable images'.
  const auto al = [](const void* p, int64_t ld, int64_t D) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % 16 == 0 && D % 16 == 0;
  };
  if (!al(a.x, a.ldx, a.D) || !al(a.bank, a.ldb, a.D)) return "operands not 16-aligned (base, row stride or D)";
  const int64_t i32max = (int64_t{1} << 31) - 1;
  if (a.B > i32max || a.N > i32max || a.D > i32max || a.S > i32max || a.ldx > i32max || a.ldb > i32max)
    return "sizes beyond the kernel's int32 arguments";
  if (a.N > 65535) return "N beyond the colseg (split-starts) kernel's 65,535 entries";
  // The kernels' stream-K arithmetic holds unit indices in int32 (the launcher's check).
  if (cdiv(a.B, k.block_b) * cdiv(a.N, k.block_n) > i32max) return "more than 2^31 hot tiles: split the batch";
  return std::string();
}

std::string segment_lse_sm90_aot(const SegmentLseArgs& a, const SegmentLseSm90AotKernels& k, const Sm90Plan& p,
                                 std::string* path) {
  std::string why = segment_lse_sm90_aot_applicable(a, k);
  if (!why.empty()) return "segment_lse_sm90_aot: " + why;
  if (p.programs < 1 || p.splits0 < 1 || p.programs > (int64_t{1} << 31) - 2 || p.splits0 > 65535)
    return "segment_lse_sm90_aot: invalid plan (use sm90_plan)";
  const bool split0 = p.splits0 > 1;
  const bool argmax = a.argmax0 != nullptr;
  const int64_t n_blocks = cdiv(a.B, k.block_b);
  const Sm90WsLayout w = sm90_workspace_layout(p, a.B, a.N, k.block_b);
  if (a.workspace == nullptr || a.workspace_bytes < w.total) return "segment_lse_sm90_aot: the workspace is too small";
  char* base = static_cast<char*>(a.workspace);
  int32_t* colseg = reinterpret_cast<int32_t*>(base + w.colseg_off);
  void* flag = base + w.flag_off;
  void* bflag = base + w.bflag_off;
  void* part_seg = base + w.part_seg_off;
  void* part_v = base + w.part_v_off;
  // Unused segment-0 workspace arguments (SPLIT is a constexpr) get lse, as the launcher passes.
  void* ws0_m = split0 ? static_cast<void*>(base + w.m0_off) : static_cast<void*>(a.lse);
  void* ws0_l = split0 ? static_cast<void*>(base + w.l0_off) : static_cast<void*>(a.lse);
  void* ws0_arg = split0 ? (argmax ? static_cast<void*>(base + w.arg0_off) : ws0_m) : static_cast<void*>(a.lse);
  const void* arg0 = argmax ? static_cast<const void*>(a.argmax0) : a.max0;  // never written without argmax

  // The launcher's pre-fills: empty segments are never visited by the kernels. flag, bflag,
  // part_seg and part_v need none: every slot the exact kernel reads, the hot kernel writes.
  const auto fill = [&](void* dst, uint32_t bits, int64_t n) {
    return aot::memset_d32(dst, bits, static_cast<std::size_t>(n), a.stream);
  };
  if (!(why = fill(a.lse, kNegInfBits, a.B * a.S)).empty() || !(why = fill(a.max0, kNegInfBits, a.B)).empty() ||
      (argmax && !(why = fill(a.argmax0, 0u, 2 * a.B)).empty()))
    return "segment_lse_sm90_aot: " + why;
  // colseg[j] = #{segment ends offsets[1:] <= j} = the split-starts search with chunk 1.
  why = launch_split_starts(a.offsets, a.S, 1, a.N, colseg, a.stream);
  if (!why.empty()) return why;

  // TMA operands when both take it and all four maps encode; else the pointer variants.
  const int64_t es = elem_bytes(a.dtype);
  std::string no_tma;
  if (!sm90_tma_ok(a.x, a.ldx, a.D, es) || !sm90_tma_ok(a.bank, a.ldb, a.D, es))
    no_tma = "operand layout TMA cannot take";
  using aot::TritonArg;
  aot::TensorMap maps[2][2];  // [hot, seg0][x, bank]: encoded per image, as Triton's launcher does
  const aot::TritonKernelImage* tma_images[2] = {k.hot[1], k.seg0[1][argmax][split0]};
  aot::TensorDescArg xd, bd;
  xd.base = a.x;
  xd.rank = 2;
  xd.shape[0] = a.B;
  xd.shape[1] = a.D;
  xd.strides[0] = a.ldx;
  xd.strides[1] = 1;
  bd = xd;
  bd.base = a.bank;
  bd.shape[0] = a.N;
  bd.strides[0] = a.ldb;
  for (int i = 0; i < 2 && no_tma.empty(); ++i) {
    const aot::TritonTensorDesc* dx = aot::find_desc(*tma_images[i], "x_ptr");
    const aot::TritonTensorDesc* db = aot::find_desc(*tma_images[i], "bank_ptr");
    if (dx == nullptr || db == nullptr) {
      no_tma = "the TMA image has no x_ptr / bank_ptr descriptor";
      break;
    }
    std::string e = aot::encode_tensor_map(*dx, xd, &maps[i][0]);
    if (e.empty()) e = aot::encode_tensor_map(*db, bd, &maps[i][1]);
    if (!e.empty()) no_tma = e;
  }
  const bool tma = no_tma.empty();
  if (path != nullptr) *path = tma ? "tma" : "ptr: " + no_tma;

  const int32_t B = static_cast<int32_t>(a.B), N = static_cast<int32_t>(a.N), D = static_cast<int32_t>(a.D),
                S = static_cast<int32_t>(a.S), P = static_cast<int32_t>(p.programs);
  // The arguments every launch may take, by the Triton signatures' names (a kernel ignores
  // those it does not have); the segment-0 workspace entries are set per launch.
  const Named common = {{"off_ptr", TritonArg::ptr(a.offsets)},   {"scale_ptr", TritonArg::ptr(a.row_scale)},
                        {"colseg_ptr", TritonArg::ptr(colseg)},   {"flag_ptr", TritonArg::ptr(flag)},
                        {"bflag_ptr", TritonArg::ptr(bflag)},     {"part_seg_ptr", TritonArg::ptr(part_seg)},
                        {"part_v_ptr", TritonArg::ptr(part_v)},   {"lse_ptr", TritonArg::ptr(a.lse)},
                        {"max0_ptr", TritonArg::ptr(a.max0)},     {"arg0_ptr", TritonArg::ptr(arg0)},
                        {"B", TritonArg::i32(B)},                 {"N", TritonArg::i32(N)},
                        {"D", TritonArg::i32(D)},                 {"S", TritonArg::i32(S)},
                        {"P", TritonArg::i32(P)},
                        {"stride_xb", TritonArg::i32(static_cast<int32_t>(a.ldx))},
                        {"stride_bn", TritonArg::i32(static_cast<int32_t>(a.ldb))},
                        {"ws_m_ptr", TritonArg::ptr(ws0_m)},      {"ws_l_ptr", TritonArg::ptr(ws0_l)},
                        {"ws_arg_ptr", TritonArg::ptr(ws0_arg)},
                        {"n_splits", TritonArg::i32(static_cast<int32_t>(p.splits0))}};
  const auto with = [&](int operands) {
    Named n = common;  // operands: 0 hot maps, 1 seg0 maps, -1 pointers
    if (tma && operands >= 0) {
      n.emplace_back("x_ptr", TritonArg::tensormap(&maps[operands][0]));
      n.emplace_back("bank_ptr", TritonArg::tensormap(&maps[operands][1]));
    } else {
      n.emplace_back("x_ptr", TritonArg::ptr(a.x));
      n.emplace_back("bank_ptr", TritonArg::ptr(a.bank));
    }
    return n;
  };
  const unsigned nb = static_cast<unsigned>(n_blocks);
  // Segments 1..S-1 on the stream-K grid; each piece clears its own mark (no flag fill).
  why = launch_named(*k.hot[tma], static_cast<unsigned>(p.programs), 1, 1, with(0), a.stream);
  if (why.empty())  // segment 0, its column tiles strided over splits0 programs per row block
    why = launch_named(*k.seg0[tma][argmax][split0], nb, static_cast<unsigned>(p.splits0), 1, with(1), a.stream);
  if (why.empty() && split0)
    why = launch_named(*k.seg0_merge[argmax], static_cast<unsigned>(cdiv(a.B, k.merge_block)), 1, 1, with(-1),
                       a.stream);
  if (why.empty())  // the marked row blocks (all segments, exact) and the pieces' cut segments
    why = launch_named(*k.exact[argmax], nb, 1, 1, with(-1), a.stream);
  return why.empty() ? why : "segment_lse_sm90_aot: " + why;
}

}  // namespace cuda
}  // namespace fastood

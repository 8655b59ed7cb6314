// TEST ONLY — the three driver-facing calls of triton_aot.h (launch, encode_tensor_map,
// memset_d32) for the CPU emulator, with a model of each sm90 Triton kernel in place of its
// cubin: segment_lse() → segment_lse_sm90_aot → these, over the stand-in kernel sets of
// fake_aot/ (tests/test_cuda_dispatch.py). Everything else (the path choice, the head's and
// the Python backend's workspace sizing, the sequence's buffers, pre-fills, grids, the colseg
// kernel) is the real code; the emulator's device memory is host memory, so the models read
// and write the buffers the sequence hands them.
//
// Each model follows its kernel's contract (fastood/ops/_triton_segment_lse_sm90.py's
// docstrings), computing in float64 and storing fp32 (base-2 states: m = max t,
// l = Σ 2^(t−m), t = L·log2 e, L = row_scale · x·bank):
//   hot        grid (P): stream-K. Units u = r·T + t (row block r, tile t of columns [end0, N),
//              T = ⌈(N − end0)/BLOCK_N⌉, U = ⌈B/BLOCK_B⌉·T); program q walks [⌊qU/P⌋, ⌊(q+1)U/P⌋),
//              a *piece* per row block it touches. Each piece clears its mark (flag[r] when it
//              leads row block r, else bflag[q]); a tile with > W = 8 segments or a row whose
//              logits spread over > 96 (log2) marks it (flag[r], or bflag[q] for a first piece
//              that starts inside its row block), and a marked piece's outputs are NaN here
//              (the exact kernel must redo the row block). Every segment ≥ 1 ending inside a
//              piece gets the lse of its columns in the piece (a partial when it began before);
//              the boundary entries part_seg / part_v [2q+1] (after ⌊qU/P⌋) and [2q+2] (before
//              ⌊(q+1)U/P⌋), where those fall inside a row block, and −1 / bflag = 0 for an empty
//              range, exactly as the kernel docstring defines them;
//   seg0       grid (row blocks, splits0): segment 0's column tiles p, p + splits0, …; lse,
//              max0, argmax0 or with SPLIT the partial (m, l, first argmax) at ws0[p·B + row];
//   seg0_merge grid (row blocks of merge_block): combines those, ties to the smaller column;
//   exact      grid (row blocks): a row block marked by one of its pieces (flag, or bflag of a
//              boundary inside it): all segments, exact; else the entries of its boundaries
//              merged in column order, lse = m + log Σ exp(v_e − m).
// The models read the sequence's colseg buffer (not the offsets) where the kernels do, and the
// hot model refuses a grid that is not P programs. Every launch is printed ("launch NAME GX GY
// GZ"), and the hot kernel's marks and the exact kernel's work ("mark flag R", "mark bflag Q",
// "merge R B_LO B_HI", "recompute R"); FASTOOD_MODEL_LOG=path appends there.
// The kernel sets may be the stand-ins of fake_aot/ or the real images embed_triton.py
// generates (tests/test_triton_aot_tma.py): the models read their arguments by the Triton
// signatures' parameter names.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/segment_lse_aot.h"
#include "cuda/split_plan.h"
#include "segment_lse_sm90_aot_kernels.h"

namespace fastood {
namespace cuda {
namespace aot {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double half_to_double(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0) v = std::ldexp(static_cast<double>(man), -24);
  else if (exp == 31) v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(static_cast<double>(man | 0x400), exp - 25);
  return sign ? -v : v;
}

double bf16_to_double(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void log_line(const std::string& s) {
  std::printf("%s\n", s.c_str());
  if (const char* path = std::getenv("FASTOOD_MODEL_LOG")) {
    if (FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "%s\n", s.c_str());
      std::fclose(f);
    }
  }
}

struct Slot {
  const SegmentLseSm90AotKernels* set = nullptr;
  std::string kind;  // hot, seg0, seg0_merge, exact
  bool tma = false, split = false, argmax = false;
};

constexpr int64_t kWindow = 8;         // SEG_WINDOW: segments one fast-path tile may touch
constexpr double kMaxSpread = 96.0;    // MAX_SPREAD (log2) of the fast path's shared reference

Slot find_slot(const TritonKernelImage* k) {
  Slot s;
  for (int i = 0; i < kSegmentLseSm90AotSetCount; ++i) {
    const SegmentLseSm90AotKernels& set = kSegmentLseSm90AotSets[i];
    s.set = &set;
    for (int t = 0; t < 2; ++t)
      for (int v = 0; v < 2; ++v) {
        if (v == 0 && k == set.hot[t]) return s.kind = "hot", s.tma = t, s;
        for (int p = 0; p < 2; ++p)
          if (k == set.seg0[t][v][p]) return s.kind = "seg0", s.tma = t, s.argmax = v, s.split = p, s;
      }
    for (int v = 0; v < 2; ++v) {
      if (k == set.exact[v]) return s.kind = "exact", s.argmax = v, s;
      if (k == set.seg0_merge[v]) return s.kind = "seg0_merge", s.argmax = v, s;
    }
  }
  s.set = nullptr;
  return s;
}

// The launch's arguments by parameter name (tensor maps: the tensor they describe).
struct Args {
  std::map<std::string, uint64_t> v;
  std::map<std::string, const TensorMap*> maps;
  // A kernel's own parameters (v.at: a name it lacks is a model bug, reported by the throw).
  template <typename T>
  T* p(const char* n) const { return reinterpret_cast<T*>(static_cast<uintptr_t>(v.at(n))); }
  int64_t i(const char* n) const { return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(v.at(n)))); }
  // What every kernel may read; 0 / nullptr where this kernel does not take it (the merges).
  int64_t i_or0(const char* n) const { return v.count(n) ? i(n) : 0; }
  const void* operand(const char* n) const {
    auto m = maps.find(n);
    if (m != maps.end()) return m->second->src.base;
    return v.count(n) ? p<const void>(n) : nullptr;
  }
};

struct Problem {
  const Args& a;
  DType dtype;
  int64_t B, N, D, S, ldx, ldb;
  const void *x, *bank;
  const int64_t* off;
  const float* scale;
  explicit Problem(const Args& args, DType t)
      : a(args), dtype(t), B(args.i("B")), N(args.i_or0("N")), D(args.i_or0("D")), S(args.i("S")),
        ldx(args.i_or0("stride_xb")), ldb(args.i_or0("stride_bn")), x(args.operand("x_ptr")),
        bank(args.operand("bank_ptr")), off(args.p<const int64_t>("off_ptr")),
        scale(static_cast<const float*>(args.operand("scale_ptr"))) {}
  double elem(const void* base, int64_t idx) const {
    uint16_t h;
    if (dtype == DType::kFloat32) return static_cast<const float*>(base)[idx];
    std::memcpy(&h, static_cast<const char*>(base) + 2 * idx, 2);
    return dtype == DType::kFloat16 ? half_to_double(h) : bf16_to_double(h);
  }
  // t = L · log2 e (base 2), L = scale · x_r · bank_c.
  double t(int64_t r, int64_t c) const {
    double acc = 0.0;
    for (int64_t d = 0; d < D; ++d) acc += elem(x, r * ldx + d) * elem(bank, c * ldb + d);
    return static_cast<double>(scale[r]) * acc * kLog2e;
  }
};

struct State {
  double m = kNegInf, l = 0.0;
  int64_t arg = 0;
  bool any = false;
};

// Add the columns [lo, hi) to the state: m' = max(m, max t), l' = l·2^(m−m') + Σ 2^(t−m');
// arg: the first column of the visit's maximum, replacing the old one only when strictly
// greater (visits in column order: the first maximiser overall).
void accumulate(const Problem& pr, int64_t r, int64_t lo, int64_t hi, State* st) {
  if (lo >= hi) return;
  std::vector<double> ts;
  for (int64_t c = lo; c < hi; ++c) ts.push_back(pr.t(r, c));
  std::size_t first = 0;
  for (std::size_t j = 1; j < ts.size(); ++j)
    if (ts[j] > ts[first]) first = j;
  const double mt = ts[first];
  if (!st->any || mt > st->m) st->arg = lo + static_cast<int64_t>(first);
  const double m = st->any ? std::max(st->m, mt) : mt;
  double l = st->any ? st->l * std::exp2(st->m - m) : 0.0;
  for (double v : ts) l += std::exp2(v - m);
  st->m = m;
  st->l = l;
  st->any = true;
}

float finish(double m, double l) {
  return static_cast<float>((m + std::log2(std::max(l, 1e-30))) * kLn2);
}

// The lse (natural log) of row r over columns [lo, hi), in float64 (−inf when empty).
double lse_of(const Problem& pr, int64_t r, int64_t lo, int64_t hi) {
  State st;
  accumulate(pr, r, lo, hi, &st);
  return st.any ? (st.m + std::log2(st.l)) * kLn2 : kNegInf;
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The hot kernel's mark rule on tile [n0, n0 + bn) of row block rb (columns past N load as 0).
bool tile_marked(const Problem& pr, const int32_t* colseg, int64_t rb, int64_t bb, int64_t n0, int64_t bn) {
  const int64_t n_end = std::min(pr.N, n0 + bn);
  if (colseg[n_end - 1] - colseg[n0] >= kWindow) return true;
  for (int64_t r = rb * bb; r < std::min(pr.B, (rb + 1) * bb); ++r) {
    double hi = kNegInf, lo = -kNegInf;
    for (int64_t c = n0; c < n0 + bn; ++c) {
      const double t = c < n_end ? pr.t(r, c) : 0.0;
      hi = std::max(hi, t);
      lo = std::min(lo, t);
    }
    if (hi - lo > kMaxSpread) return true;
  }
  return false;
}

std::string run_hot(const Problem& pr, const Slot& s, unsigned gx, unsigned gy) {
  const int64_t bb = s.set->block_b, bn = s.set->block_n, P = pr.a.i("P");
  if (P < 1 || gx != P || gy != 1) return "model of hot: the grid is not (P) programs";
  const int64_t end0 = pr.off[1], T = cdiv(pr.N - end0, bn), nb = cdiv(pr.B, bb), U = nb * T;
  const int32_t* colseg = pr.a.p<const int32_t>("colseg_ptr");
  int32_t* flag = pr.a.p<int32_t>("flag_ptr");
  int32_t* bflag = pr.a.p<int32_t>("bflag_ptr");
  int32_t* part_seg = pr.a.p<int32_t>("part_seg_ptr");
  float* part_v = pr.a.p<float>("part_v_ptr");
  float* lse = pr.a.p<float>("lse_ptr");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t q = 0; q < P; ++q) {
    const int64_t u0 = q * U / P, u1 = (q + 1) * U / P;
    if (u1 == u0) {  // an empty range cuts nothing
      part_seg[2 * q + 1] = part_seg[2 * q + 2] = -1;
      bflag[q] = 0;
      continue;
    }
    const int64_t t0 = u0 % T, n_start = end0 + t0 * bn;
    const int64_t s0 = colseg[n_start];
    int64_t head = pr.off[s0] < n_start ? s0 : -1;  // the segment cut at boundary q
    for (int64_t u = u0; u < u1;) {  // one piece: units [u, e) of row block rb
      const int64_t rb = u / T, ta = u % T, e = std::min(u1, (rb + 1) * T), tb = e - rb * T;
      const int64_t c_lo = end0 + ta * bn, c_hi = std::min(pr.N, end0 + tb * bn);
      const bool inside = ta > 0;  // only a program's first piece starts inside a row block
      (inside ? bflag[q] : flag[rb]) = 0;
      bool marked = false;
      for (int64_t t = ta; t < tb && !marked; ++t) marked = tile_marked(pr, colseg, rb, bb, end0 + t * bn, bn);
      if (marked) {
        (inside ? bflag[q] : flag[rb]) = 1;
        log_line((inside ? "mark bflag " : "mark flag ") + std::to_string(inside ? q : rb));
      }
      const int64_t s_hi = colseg[c_hi - 1];
      for (int64_t r = rb * bb; r < std::min(pr.B, (rb + 1) * bb); ++r) {
        for (int64_t seg = colseg[c_lo]; seg <= s_hi; ++seg) {  // the segments ending in the piece
          if (seg < 1 || pr.off[seg + 1] <= pr.off[seg] || pr.off[seg + 1] > c_hi) continue;
          lse[r * pr.S + seg] = marked ? nan : static_cast<float>(lse_of(pr, r, std::max(c_lo, pr.off[seg]), pr.off[seg + 1]));
        }
        if (e == u1 && tb < T && pr.off[s_hi + 1] > c_hi) {  // the segment still open at boundary q + 1
          const bool through = s_hi == head && rb * T <= u0;   // it began before the piece, too
          const int64_t slot = through ? 2 * q + 1 : 2 * q + 2;
          part_v[slot * bb + (r - rb * bb)] =
              marked ? nan : static_cast<float>(lse_of(pr, r, std::max(c_lo, pr.off[s_hi]), c_hi));
        }
      }
      if (e == u1 && tb < T) {  // the range stops inside row block rb: boundary q + 1's "before" entry
        if (pr.off[s_hi + 1] > c_hi) {
          if (s_hi == head && rb * T <= u0) {
            head = -(head + 2);
            part_seg[2 * q + 2] = -1;
          } else {
            part_seg[2 * q + 2] = static_cast<int32_t>(s_hi);
          }
        } else {
          part_seg[2 * q + 2] = -1;
        }
      }
      u = e;
    }
    if (t0 > 0) part_seg[2 * q + 1] = static_cast<int32_t>(head);
  }
  return std::string();
}

void run_seg0(const Problem& pr, const Slot& s, unsigned gx, unsigned gy) {
  const int64_t bb = s.set->block_b, bn = s.set->block_n, n_splits = pr.a.i("n_splits");
  const int64_t end0 = pr.off[1], n_t0 = (end0 + bn - 1) / bn;
  float* lse = pr.a.p<float>("lse_ptr");
  float* max0 = pr.a.p<float>("max0_ptr");
  for (int64_t bx = 0; bx < gx; ++bx)
    for (int64_t p = 0; p < gy; ++p)
      for (int64_t r = bx * bb; r < std::min(pr.B, (bx + 1) * bb); ++r) {
        State st;
        for (int64_t tile = s.split ? p : 0; tile < n_t0; tile += s.split ? n_splits : 1)
          accumulate(pr, r, tile * bn, std::min(end0, (tile + 1) * bn), &st);
        if (s.split) {
          if (p >= n_t0) continue;
          pr.a.p<float>("ws_m_ptr")[p * pr.B + r] = static_cast<float>(st.m);
          pr.a.p<float>("ws_l_ptr")[p * pr.B + r] = static_cast<float>(st.l);
          if (s.argmax) pr.a.p<int32_t>("ws_arg_ptr")[p * pr.B + r] = static_cast<int32_t>(st.arg);
        } else if (end0 > 0) {
          lse[r * pr.S] = finish(st.m, st.l);
          max0[r] = static_cast<float>(st.m * kLn2);
          if (s.argmax) pr.a.p<int64_t>("arg0_ptr")[r] = st.arg;
        }
      }
}

void run_seg0_merge(const Problem& pr, const Slot& s, unsigned gx) {
  const int64_t mb = s.set->merge_block, bn = s.set->block_n, n_splits = pr.a.i("n_splits");
  const int64_t end0 = pr.off[1];
  const float* ws_m = pr.a.p<const float>("ws_m_ptr");
  const float* ws_l = pr.a.p<const float>("ws_l_ptr");
  const int32_t* ws_arg = pr.a.p<const int32_t>("ws_arg_ptr");
  for (int64_t r = 0; r < std::min<int64_t>(pr.B, gx * mb); ++r) {
    double m = kNegInf, l = 0.0;
    int64_t arg = 0;
    for (int64_t p = 0; p < std::min(n_splits, (end0 + bn - 1) / bn); ++p) {
      const double mp = ws_m[p * pr.B + r], lp = ws_l[p * pr.B + r];
      if (s.argmax) {
        const int64_t ap = ws_arg[p * pr.B + r];
        if (mp > m || (mp == m && ap < arg)) arg = ap;
      }
      const double mn = std::max(m, mp), ref = mn == kNegInf ? 0.0 : mn;
      l = l * std::exp2(m - ref) + lp * std::exp2(mp - ref);
      m = mn;
    }
    if (end0 > 0) {
      pr.a.p<float>("lse_ptr")[r * pr.S] = finish(m, l);
      pr.a.p<float>("max0_ptr")[r] = static_cast<float>(m * kLn2);
      if (s.argmax) pr.a.p<int64_t>("arg0_ptr")[r] = arg;
    }
  }
}

std::string run_exact(const Problem& pr, const Slot& s, unsigned gx) {
  const int64_t bb = s.set->block_b, bn = s.set->block_n, P = pr.a.i("P");
  if (P < 1) return "model of exact: P < 1";
  const int64_t end0 = pr.off[1], T = cdiv(pr.N - end0, bn), U = cdiv(pr.B, bb) * T;
  const int32_t* flag = pr.a.p<const int32_t>("flag_ptr");
  const int32_t* bflag = pr.a.p<const int32_t>("bflag_ptr");
  const int32_t* part_seg = pr.a.p<const int32_t>("part_seg_ptr");
  const float* part_v = pr.a.p<const float>("part_v_ptr");
  float* lse = pr.a.p<float>("lse_ptr");
  for (int64_t rb = 0; rb < gx; ++rb) {
    if (T == 0) continue;  // no hot tile: nothing marked, nothing cut
    const int64_t u_first = rb * T;
    const int64_t b_lo = stream_k_owner(u_first, U, P) + 1, b_hi = stream_k_owner(u_first + T - 1, U, P);
    bool flagged = flag[rb] != 0;
    for (int64_t b = b_lo; b <= b_hi; ++b) flagged = flagged || bflag[b] != 0;
    if (!flagged) {
      if (b_hi >= b_lo) log_line("merge " + std::to_string(rb) + " " + std::to_string(b_lo) + " " + std::to_string(b_hi));
      for (int64_t r = rb * bb; r < std::min(pr.B, (rb + 1) * bb); ++r) {
        int64_t cur = -1;
        double v = kNegInf;
        for (int64_t e = 2 * b_lo; e < 2 * b_hi + 2; ++e) {
          const int64_t code = part_seg[e];
          if (code == -1) continue;
          int64_t seg;
          double ve;
          if (e % 2 == 1 && code >= 0) {  // after a boundary: the partial sits in lse
            seg = code;
            ve = lse[r * pr.S + seg];
          } else {
            seg = code >= 0 ? code : -code - 2;
            ve = part_v[e * bb + (r - rb * bb)];
          }
          if (seg != cur) {
            if (cur >= 0) lse[r * pr.S + cur] = static_cast<float>(v);
            v = ve;
          } else {
            const double mx = std::max(v, ve), mr = mx == kNegInf ? 0.0 : mx;
            v = mr + std::log(std::exp(v - mr) + std::exp(ve - mr));
          }
          cur = seg;
        }
        if (cur >= 0) lse[r * pr.S + cur] = static_cast<float>(v);
      }
      continue;
    }
    log_line("recompute " + std::to_string(rb));
    for (int64_t r = rb * bb; r < std::min(pr.B, (rb + 1) * bb); ++r)
      for (int64_t seg = 0; seg < pr.S; ++seg) {
        State st;
        accumulate(pr, r, pr.off[seg], pr.off[seg + 1], &st);
        if (!st.any) continue;
        lse[r * pr.S + seg] = finish(st.m, st.l);
        if (seg == 0) {
          pr.a.p<float>("max0_ptr")[r] = static_cast<float>(st.m * kLn2);
          if (s.argmax) pr.a.p<int64_t>("arg0_ptr")[r] = st.arg;
        }
      }
  }
  return std::string();
}

}  // namespace

std::string launch(const TritonKernelImage& k, unsigned gx, unsigned gy, unsigned gz, const std::vector<TritonArg>& args,
                   void* global_scratch, void*) {
  const Slot s = find_slot(&k);
  char head[160];
  std::snprintf(head, sizeof(head), "launch %s%s%s%s %u %u %u", s.set ? s.kind.c_str() : k.name,
                s.tma ? " tma" : "", s.split ? " split" : "", s.argmax ? " argmax" : "", gx, gy, gz);
  log_line(head);
  if (s.set == nullptr) return std::string();  // a portable image: recorded only
  PackedParams packed;  // the real packing: the kinds and the count must match the image
  std::string why = pack_params(k, args, global_scratch, nullptr, &packed);
  if (!why.empty()) return why;
  Args a;
  std::size_t i = 0;
  for (int j = 0; j < k.num_params; ++j) {
    const ParamKind kind = k.params[j].kind;
    if (kind == ParamKind::kGlobalScratch || kind == ParamKind::kProfileScratch || kind == ParamKind::kDescShape ||
        kind == ParamKind::kDescStride)
      continue;
    if (kind == ParamKind::kTensorMap) a.maps[k.params[j].name] = args[i].map;
    a.v[k.params[j].name] = args[i].bits;
    ++i;
  }
  try {
    const Problem pr(a, s.set->dtype);
    if (s.kind == "hot") why = run_hot(pr, s, gx, gy);
    else if (s.kind == "seg0") run_seg0(pr, s, gx, gy);
    else if (s.kind == "seg0_merge") run_seg0_merge(pr, s, gx);
    else why = run_exact(pr, s, gx);
  } catch (const std::out_of_range&) {
    return "model of " + s.kind + ": the image lacks a parameter the model reads";
  }
  return why;
}

std::string encode_tensor_map(const TritonTensorDesc& desc, const TensorDescArg& a, TensorMap* out) {
  TmaEncodeArgs e;
  const std::string why = tma_encode_args(desc, a, &e);  // the real TMA rules
  if (!why.empty()) return why;
  std::memset(out->bytes, 0, sizeof(out->bytes));
  out->src = a;
  return std::string();
}

std::string memset_d32(void* dst, uint32_t value, std::size_t count, void*) {
  uint32_t* p = static_cast<uint32_t*>(dst);
  for (std::size_t i = 0; i < count; ++i) p[i] = value;
  return std::string();
}

}  // namespace aot
}  // namespace cuda
}  // namespace fastood

// TEST ONLY — runs fastood's CUDA host API (segment_lse, head_score) on the CPU emulator
// (fastood_emu.h) with inputs from files, for tests/test_cuda_emulated.py.
//
//   emu_driver segment_lse DIR     reads DIR/args.txt (key value lines), x.bin, bank.bin,
//                                  offsets.bin (int64), row_scale.bin (f32); writes lse.bin,
//                                  max0.bin, argmax0.bin, plan.txt ("splits chunk blocks_per_sm")
//                                  and sm90.txt ("programs splits0 workspace_bytes" of the sm90
//                                  request; key `programs` > 0 forces the hot kernel's grid)
//   emu_driver head DIR            reads args.txt, x.bin, bank.bin; writes score.bin, pred.bin
//   emu_driver split_starts DIR    reads args.txt (S chunk splits), offsets.bin; writes starts.bin (int32)
//   emu_driver sizes DIR           head / sm90 workspace sizes over a list of batches (run_sizes)
// segment_lse and head also write path.txt (the kernels segment_lse ran: cuda_path.h).
//
// Every buffer is allocated at its exact size (so AddressSanitizer catches any access past
// it) and the outputs and workspace start as all-ones bytes (NaN / −1), so an element the
// kernels never write shows up in the comparison. Exit 0 on success, 3 with the launcher's
// message on stderr when it refuses, 2 on a usage or I/O error.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>

#include "cuda/fastood_cuda.cuh"
#ifdef FASTOOD_WITH_TRITON_AOT
#include "cuda/segment_lse_aot.h"
#endif
#include "emu_io.h"

namespace fc = fastood::cuda;

using namespace emu_io;

namespace {

fc::DType dtype_of(const std::string& s) {
  if (s == "float32") return fc::DType::kFloat32;
  if (s == "float16") return fc::DType::kFloat16;
  if (s == "bfloat16") return fc::DType::kBFloat16;
  die("emu_driver: unknown dtype " + s);
}

std::size_t elem_size(fc::DType t) { return t == fc::DType::kFloat32 ? 4 : 2; }

int run_segment_lse(const std::string& dir) {
  auto kv = read_args(dir);
  fc::SegmentLseArgs a;
  a.dtype = dtype_of(kv.at("dtype"));
  a.B = geti(kv, "B");
  a.N = geti(kv, "N");
  a.D = geti(kv, "D");
  a.S = geti(kv, "S");
  a.ldx = geti(kv, "ldx");
  a.ldb = geti(kv, "ldb");
  const std::size_t es = elem_size(a.dtype);
  // x.bin / bank.bin hold `x_offset` / `bank_offset` leading elements, then the operand.
  Operand x(dir + "/x.bin"), bank(dir + "/bank.bin");
  a.x = x.base + geti(kv, "x_offset") * static_cast<int64_t>(es);
  a.bank = bank.base + geti(kv, "bank_offset") * static_cast<int64_t>(es);
  Operand off(dir + "/offsets.bin"), rs(dir + "/row_scale.bin");
  a.offsets = reinterpret_cast<const int64_t*>(off.base);
  a.row_scale = reinterpret_cast<const float*>(rs.base);
  Buffer lse(static_cast<std::size_t>(a.B * a.S) * 4), max0(static_cast<std::size_t>(a.B) * 4);
  const bool want_arg = geti(kv, "argmax") != 0;
  Buffer arg(want_arg ? static_cast<std::size_t>(a.B) * 8 : 0);
  a.lse = reinterpret_cast<float*>(lse.ptr);
  a.max0 = reinterpret_cast<float*>(max0.ptr);
  a.argmax0 = want_arg ? reinterpret_cast<int64_t*>(arg.ptr) : nullptr;
  int sms = static_cast<int>(geti(kv, "sm_count"));
  // Resident blocks per SM as the Python launcher gets them: the occupancy API (the
  // emulator's stand-in: NVIDIA's calculator on the register count in FASTOOD_EMU_REGS).
  std::string occ_err;
  const int per_sm = fc::fwd_blocks_per_sm(a.dtype, fc::fwd_vector_loads(a.x, a.ldx, a.bank, a.ldb, a.D), &occ_err);
  if (per_sm < 1) die(occ_err, 3);
  a.plan = fc::plan_splits(a.B, a.N, a.S, sms, per_sm, geti(kv, "splits"), fc::kDefaultSplitWorkspaceBytes);
  // As the Python backend sizes it: the larger of the portable plan's and the sm90 request's.
  fc::Sm90Request r90;
  int64_t ws_bytes = a.plan.workspace_bytes;
  if (fc::sm90_request(a.dtype, a.B, a.N, a.S, sms, geti(kv, "splits"), 2 * fc::kDefaultSplitWorkspaceBytes, &r90)) {
    a.sm90_programs = r90.programs;
    a.sm90_splits0 = r90.splits0;
#ifdef FASTOOD_WITH_TRITON_AOT
    // programs (tests): force the hot kernel's stream-K grid (the launcher's num_programs),
    // the request's bytes recomputed for it (the model set's tile: 128 rows).
    if (kv.count("programs") && geti(kv, "programs") > 0) {
      a.sm90_programs = r90.programs = geti(kv, "programs");
      r90.workspace_bytes =
          fc::sm90_workspace_layout(fc::sm90_plan(r90.programs, r90.splits0), a.B, a.N, 128).total;
    }
#endif
    ws_bytes = std::max(ws_bytes, r90.workspace_bytes);
  }
  // ws_sm90_minus (tests): reserve that many bytes less than the sm90 request, to see the
  // too-small error.
  if (kv.count("ws_sm90_minus")) ws_bytes = r90.workspace_bytes - geti(kv, "ws_sm90_minus");
  Buffer ws(static_cast<std::size_t>(std::max<int64_t>(ws_bytes, 0)));
  a.workspace = ws.ptr;
  a.workspace_bytes = ws_bytes;
  std::string path;
  a.path = &path;
  const std::string err = fc::segment_lse(a);
  if (!err.empty()) die(err, 3);
  std::ofstream(dir + "/path.txt") << path << "\n";
  write_file(dir + "/lse.bin", lse.ptr, lse.bytes);
  write_file(dir + "/max0.bin", max0.ptr, max0.bytes);
  write_file(dir + "/argmax0.bin", arg.ptr, arg.bytes);
  std::ofstream(dir + "/plan.txt") << a.plan.splits << " " << a.plan.chunk << " " << per_sm << "\n";
  std::ofstream(dir + "/sm90.txt") << r90.programs << " " << r90.splits0 << " " << r90.workspace_bytes << "\n";
  return 0;
}

int run_head(const std::string& dir) {
  auto kv = read_args(dir);
  fc::HeadArgs a;
  a.dtype = dtype_of(kv.at("dtype"));
  a.B = geti(kv, "B");
  a.N = geti(kv, "N");
  a.D = geti(kv, "D");
  a.ldx = a.D;
  a.ldb = a.D;
  const std::string method = kv.at("method");
  a.cfg.method = method == "mcm" ? fc::HeadMethod::kMcm : fc::HeadMethod::kNegLabel;
  a.cfg.num_id = geti(kv, "num_id");
  a.cfg.groups = geti(kv, "groups");
  a.cfg.temperature = std::stof(kv.at("temperature"));
  a.cfg.normalize = geti(kv, "normalize") != 0;
  a.sm_count = static_cast<int>(geti(kv, "sm_count"));  // <= 0: ask the (emulated) device
  Operand x(dir + "/x.bin"), bank(dir + "/bank.bin");
  a.x = x.base;
  a.bank = bank.base;
  Buffer score(static_cast<std::size_t>(a.B) * 4), pred(static_cast<std::size_t>(a.B) * 4);
  a.score = reinterpret_cast<float*>(score.ptr);
  a.pred = reinterpret_cast<int32_t*>(pred.ptr);
  const std::string why = fc::head_check(a.cfg, a.N);
  if (!why.empty()) die(why, 3);
  a.workspace_bytes = fc::head_workspace_bytes(a.cfg, a.B, a.N);
  Buffer ws(static_cast<std::size_t>(a.workspace_bytes));
  a.workspace = ws.ptr;
  std::string path;
  a.path = &path;
  const std::string err = fc::head_score(a);
  if (!err.empty()) die(err, 3);
  std::ofstream(dir + "/path.txt") << path << "\n";
  std::ofstream(dir + "/workspace.txt") << a.workspace_bytes << "\n";
  write_file(dir + "/score.bin", score.ptr, score.bytes);
  write_file(dir + "/pred.bin", pred.ptr, pred.bytes);
  return 0;
}

// args.txt: dtype method num_id groups N sm_count and B_list (comma-separated batch sizes);
// writes sizes.txt, per B: "B head_workspace_bytes sm90_workspace_bound request" where
// request is "programs splits0 bytes" of sm90_request within the head's split budget
// (head_workspace_bytes − head_fixed, head_fixed given as args: the test computes it), or "none".
int run_sizes(const std::string& dir) {
  auto kv = read_args(dir);
  fc::HeadConfig cfg;
  cfg.method = kv.at("method") == "mcm" ? fc::HeadMethod::kMcm : fc::HeadMethod::kNegLabel;
  cfg.num_id = geti(kv, "num_id");
  cfg.groups = geti(kv, "groups");
  const int64_t N = geti(kv, "N");
  const std::string why = fc::head_check(cfg, N);
  if (!why.empty()) die(why, 3);
  const int64_t S = fc::head_segments(cfg);
  const int64_t used = cfg.method == fc::HeadMethod::kMcm ? cfg.num_id
                                                          : cfg.num_id + cfg.groups * ((N - cfg.num_id) / cfg.groups);
  std::ofstream out(dir + "/sizes.txt");
  std::string list = kv.at("B_list") + ",";
  for (std::size_t pos = 0, next; (next = list.find(',', pos)) != std::string::npos; pos = next + 1) {
    const int64_t B = std::stoll(list.substr(pos, next - pos));
    const int64_t head = fc::head_workspace_bytes(cfg, B, N);
    const int64_t fixed = geti(kv, ("fixed_" + std::to_string(B)).c_str());
    out << B << " " << head << " " << fc::sm90_workspace_bound(B, used, S, fc::kHeadSplitWorkspaceBytes);
    fc::Sm90Request r;
    if (fc::sm90_request(dtype_of(kv.at("dtype")), B, used, S, static_cast<int>(geti(kv, "sm_count")), 0, head - fixed, &r))
      out << " " << r.programs << " " << r.splits0 << " " << r.workspace_bytes << "\n";
    else
      out << " none\n";
  }
  return 0;
}

// args.txt: S, chunk, splits; offsets.bin (S+1 int64) → starts.bin (splits int32).
int run_split_starts(const std::string& dir) {
  auto kv = read_args(dir);
  const int64_t splits = geti(kv, "splits");
  Operand off(dir + "/offsets.bin");
  Buffer out(static_cast<std::size_t>(splits) * 4);
  const std::string err = fc::launch_split_starts(reinterpret_cast<const int64_t*>(off.base), geti(kv, "S"),
                                                  geti(kv, "chunk"), splits, reinterpret_cast<int32_t*>(out.ptr), nullptr);
  if (!err.empty()) die(err, 3);
  write_file(dir + "/starts.bin", out.ptr, out.bytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) die("usage: emu_driver (segment_lse|head) DIR");
  const std::string mode = argv[1];
  if (mode == "segment_lse") return run_segment_lse(argv[2]);
  if (mode == "head") return run_head(argv[2]);
  if (mode == "split_starts") return run_split_starts(argv[2]);
  if (mode == "sizes") return run_sizes(argv[2]);
  die("unknown mode " + mode);
}

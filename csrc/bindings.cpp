// pybind11 module `fastood._C`: the compiled kernels, no libtorch link.
//
// CPU: `segment_lse_reduce` takes NumPy views of torch CPU tensors
// (`tensor.numpy()` is zero-copy) and reduces a block of fp32 logits in place
// into the caller's output arrays, with the GIL released.
//
// CUDA (csrc/cuda/*.cu, built when CMake finds nvcc: FASTOOD_WITH_CUDA): the
// launchers take device pointers, element strides and the cudaStream_t as Python
// ints (`tensor.data_ptr()`, `torch.cuda.current_stream().cuda_stream`), so the
// module never links libtorch. The CUDA runtime is linked statically and touched
// only when a CUDA function is called: the module imports on machines without a
// GPU or driver. Bad arguments raise ValueError; a failed launch raises RuntimeError
// with the CUDA error name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/segment_lse.h"
#ifdef FASTOOD_WITH_CUDA
#include "cuda/fastood_cuda.cuh"
#endif

namespace py = pybind11;

namespace {

using fastood::cpu::Isa;

Isa parse_isa(const std::string& name) {
  if (name == "auto") return Isa::Auto;
  if (name == "generic") return Isa::Generic;
  if (name == "avx2") {
    if (!fastood::cpu::isa_supported(Isa::Avx2)) throw py::value_error("isa='avx2' is not supported on this CPU/build");
    return Isa::Avx2;
  }
  throw py::value_error("isa must be 'auto', 'generic' or 'avx2', got '" + name + "'");
}

// Element stride of dimension `dim`, checking that the byte stride is a whole number of elements.
int64_t elem_stride(const py::array& a, int dim, const char* name) {
  const auto bytes = static_cast<int64_t>(a.strides(dim));
  const auto item = static_cast<int64_t>(a.itemsize());
  if (bytes % item != 0) throw py::value_error(std::string(name) + " has a stride that is not a multiple of its item size");
  return bytes / item;
}

template <typename T>
void check_array(const py::array& a, const char* name, int ndim, bool writable) {
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " has the wrong dtype (expected " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " + std::string(py::str(a.dtype())) + ")");
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + " must be writable");
}

void segment_lse_reduce(const py::array& logits, const py::array& offsets, py::array& lse, py::array& max0,
                        py::object argmax0, int num_threads, const std::string& isa) {
  check_array<float>(logits, "logits", 2, false);
  check_array<int64_t>(offsets, "offsets", 1, false);
  check_array<float>(lse, "lse", 2, true);
  check_array<float>(max0, "max0", 1, true);

  const int64_t rows = logits.shape(0), n_cols = logits.shape(1);
  const int64_t S = offsets.shape(0) - 1;
  if (S < 1) throw py::value_error("offsets must have at least 2 entries (S+1 for S segments)");
  if (lse.shape(0) != rows || lse.shape(1) != S)
    throw py::value_error("lse must have shape (rows, S) = (" + std::to_string(rows) + ", " + std::to_string(S) + ")");
  if (max0.shape(0) != rows) throw py::value_error("max0 must have shape (rows,)");
  if (n_cols > INT32_MAX - 64) throw py::value_error("logits has too many columns (the argmax uses 32-bit lane indices)");
  if (n_cols > 1 && rows > 0 && elem_stride(logits, 1, "logits") != 1)
    throw py::value_error("logits must have unit stride along columns");
  if (elem_stride(offsets, 0, "offsets") != 1) throw py::value_error("offsets must be contiguous");

  // Offsets are indices into the logits: validate them here (O(S)) so a bad call cannot read out of bounds.
  const auto* off = static_cast<const int64_t*>(offsets.data());
  if (off[0] != 0 || off[S] != n_cols)
    throw py::value_error("offsets must start at 0 and end at the number of logits columns (" + std::to_string(n_cols) + ")");
  for (int64_t s = 0; s < S; ++s)
    if (off[s + 1] < off[s]) throw py::value_error("offsets must be non-decreasing (offsets[" + std::to_string(s + 1) + "] < offsets[" + std::to_string(s) + "])");

  fastood::cpu::SegmentLseBlock blk;
  blk.logits = static_cast<const float*>(logits.data());
  blk.rows = rows;
  blk.n_cols = n_cols;
  blk.logits_row_stride = rows > 1 ? elem_stride(logits, 0, "logits") : 0;
  blk.offsets = off;
  blk.n_segments = S;
  blk.lse = static_cast<float*>(lse.mutable_data());
  blk.lse_row_stride = elem_stride(lse, 0, "lse");
  blk.lse_col_stride = elem_stride(lse, 1, "lse");
  blk.max0 = static_cast<float*>(max0.mutable_data());
  blk.max0_stride = elem_stride(max0, 0, "max0");

  py::array arg;  // keeps the argmax array alive while the GIL is released
  if (!argmax0.is_none()) {
    if (!py::isinstance<py::array>(argmax0)) throw py::type_error("argmax0 must be a NumPy int64 array or None");
    arg = py::reinterpret_borrow<py::array>(argmax0);
    check_array<int64_t>(arg, "argmax0", 1, true);
    if (arg.shape(0) != rows) throw py::value_error("argmax0 must have shape (rows,) or be None");
    blk.argmax0 = static_cast<int64_t*>(arg.mutable_data());
    blk.argmax0_stride = elem_stride(arg, 0, "argmax0");
  }
  const Isa which = parse_isa(isa);

  py::gil_scoped_release nogil;
  fastood::cpu::segment_lse_block(blk, num_threads, which);
}

// Backward of segment_lse_reduce on a block of recomputed logits (see csrc/cpu/segment_lse_bwd.cpp).
template <typename T>
void segment_lse_bwd_weights_t(py::array& logits, const py::array& offsets, const py::array& lse, const py::array& g,
                               py::object arg0, py::object h, int num_threads) {
  check_array<T>(logits, "logits", 2, true);
  check_array<int64_t>(offsets, "offsets", 1, false);
  check_array<T>(lse, "lse", 2, false);
  check_array<T>(g, "g", 2, false);
  const int64_t rows = logits.shape(0), n_cols = logits.shape(1), S = offsets.shape(0) - 1;
  if (S < 1) throw py::value_error("offsets must have at least 2 entries (S+1 for S segments)");
  for (const py::array* a : {&lse, &g})
    if (a->shape(0) != rows || a->shape(1) != S)
      throw py::value_error("lse and g must have shape (rows, S) = (" + std::to_string(rows) + ", " + std::to_string(S) + ")");
  if (n_cols > 1 && rows > 0 && elem_stride(logits, 1, "logits") != 1)
    throw py::value_error("logits must have unit stride along columns");
  if (S > 1 && rows > 0 && (elem_stride(lse, 1, "lse") != 1 || elem_stride(g, 1, "g") != 1))
    throw py::value_error("lse and g must have unit stride along segments");
  if (elem_stride(offsets, 0, "offsets") != 1) throw py::value_error("offsets must be contiguous");
  const auto* off = static_cast<const int64_t*>(offsets.data());
  if (off[0] != 0 || off[S] != n_cols)
    throw py::value_error("offsets must start at 0 and end at the number of logits columns (" + std::to_string(n_cols) + ")");
  for (int64_t s = 0; s < S; ++s)
    if (off[s + 1] < off[s]) throw py::value_error("offsets must be non-decreasing");

  fastood::cpu::SegmentLseBwdBlock<T> blk;
  blk.logits = static_cast<T*>(logits.mutable_data());
  blk.rows = rows;
  blk.n_cols = n_cols;
  blk.logits_row_stride = rows > 1 ? elem_stride(logits, 0, "logits") : 0;
  blk.offsets = off;
  blk.n_segments = S;
  blk.lse = static_cast<const T*>(lse.data());
  blk.lse_row_stride = rows > 1 ? elem_stride(lse, 0, "lse") : 0;
  blk.g = static_cast<const T*>(g.data());
  blk.g_row_stride = rows > 1 ? elem_stride(g, 0, "g") : 0;
  py::array a0, hh;  // kept alive while the GIL is released
  if (arg0.is_none() != h.is_none()) throw py::value_error("arg0 and h must both be given or both be None");
  if (!arg0.is_none()) {
    a0 = py::reinterpret_borrow<py::array>(arg0);
    hh = py::reinterpret_borrow<py::array>(h);
    check_array<int64_t>(a0, "arg0", 1, false);
    check_array<T>(hh, "h", 1, false);
    if (a0.shape(0) != rows || hh.shape(0) != rows) throw py::value_error("arg0 and h must have shape (rows,)");
    if (rows > 1 && (elem_stride(a0, 0, "arg0") != 1 || elem_stride(hh, 0, "h") != 1))
      throw py::value_error("arg0 and h must be contiguous");
    const auto* a = static_cast<const int64_t*>(a0.data());
    for (int64_t r = 0; r < rows; ++r)
      if (a[r] < 0 || a[r] >= n_cols) throw py::value_error("arg0 has an index outside [0, n_cols)");
    blk.arg0 = a;
    blk.h = static_cast<const T*>(hh.data());
  }
  py::gil_scoped_release nogil;
  fastood::cpu::segment_lse_bwd_weights<T>(blk, num_threads);
}

void segment_lse_bwd_weights(py::array& logits, const py::array& offsets, const py::array& lse, const py::array& g,
                             py::object arg0, py::object h, int num_threads) {
  if (logits.dtype().equal(py::dtype::of<double>()))
    segment_lse_bwd_weights_t<double>(logits, offsets, lse, g, arg0, h, num_threads);
  else
    segment_lse_bwd_weights_t<float>(logits, offsets, lse, g, arg0, h, num_threads);
}

bool cuda_available() {
#ifdef FASTOOD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = compiler_string();
  d["cxx_standard"] = static_cast<long>(__cplusplus);
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = static_cast<int>(_OPENMP);
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
#endif
  d["cuda"] = cuda_available();
#ifdef FASTOOD_WITH_CUDA
  d["cuda_runtime"] = fastood::cuda::runtime_version();
#else
  d["cuda_runtime"] = py::none();
#endif
  d["cpu_isa"] = fastood::cpu::resolved_isa_name(Isa::Auto);
  d["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                  std::to_string(PYBIND11_VERSION_PATCH);
#ifdef NDEBUG
  d["debug"] = false;
#else
  d["debug"] = true;
#endif
  return d;
}


#ifdef FASTOOD_WITH_CUDA
namespace fc = fastood::cuda;

fc::DType parse_dtype(const std::string& name) {
  if (name == "float32") return fc::DType::kFloat32;
  if (name == "float16") return fc::DType::kFloat16;
  if (name == "bfloat16") return fc::DType::kBFloat16;
  throw py::value_error("dtype must be 'float32', 'float16' or 'bfloat16', got '" + name + "'");
}

template <typename P>
P* as_ptr(uintptr_t v) {
  return reinterpret_cast<P*>(v);
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

py::tuple cuda_plan_splits(int64_t B, int64_t N, int64_t S, int sm_count, int blocks_per_sm, int64_t num_splits,
                           int64_t max_workspace_bytes) {
  require(B >= 1 && N >= 1 && S >= 1, "plan_splits: B, N and S must be >= 1");
  require(blocks_per_sm >= 1, "blocks_per_sm must be >= 1 (from cuda_fwd_blocks_per_sm)");
  require(num_splits >= 0, "num_splits must be >= 0 (0 = automatic)");
  require(max_workspace_bytes >= 0, "max_workspace_bytes must be >= 0");
  const fc::SplitPlan p = fc::plan_splits(B, N, S, sm_count, blocks_per_sm, num_splits, max_workspace_bytes);
  return py::make_tuple(p.splits, p.chunk, p.workspace_bytes);
}

int cuda_fwd_blocks_per_sm(const std::string& dtype, bool vector_loads) {
  std::string err;
  const int n = fc::fwd_blocks_per_sm(parse_dtype(dtype), vector_loads, &err);
  if (n < 1) throw std::runtime_error(err);
  return n;
}

bool cuda_fwd_vector_loads(uintptr_t x, int64_t ldx, uintptr_t bank, int64_t ldb, int64_t D) {
  return fc::fwd_vector_loads(as_ptr<const void>(x), ldx, as_ptr<const void>(bank), ldb, D);
}

py::object cuda_sm90_request(const std::string& dtype, int64_t B, int64_t N, int64_t S, int sm_count,
                             int64_t num_splits, int64_t max_bytes) {
  require(B >= 1 && N >= 1 && S >= 1, "cuda_sm90_request: B, N and S must be >= 1");
  require(num_splits >= 0, "num_splits must be >= 0 (0 = the launcher's heuristic)");
  require(max_bytes >= 0, "max_bytes must be >= 0");
  fc::Sm90Request r;
  if (!fc::sm90_request(parse_dtype(dtype), B, N, S, sm_count, num_splits, max_bytes, &r)) return py::none();
  return py::make_tuple(r.programs, r.splits0, r.workspace_bytes);
}

std::string segment_lse_cuda(const std::string& dtype, uintptr_t x, int64_t ldx, uintptr_t bank, int64_t ldb,
                             int64_t B, int64_t N, int64_t D, uintptr_t offsets, int64_t S, uintptr_t row_scale,
                             uintptr_t lse, uintptr_t max0, uintptr_t argmax0, int64_t splits, int64_t chunk,
                             uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream, int64_t sm90_programs,
                             int64_t sm90_splits0) {
  fc::SegmentLseArgs a;
  a.dtype = parse_dtype(dtype);
  require(B >= 1 && N >= 1 && D >= 1 && S >= 1, "segment_lse_cuda: B, N, D and S must be >= 1");
  require(ldx >= 0 && ldb >= 0, "segment_lse_cuda: row strides must be >= 0");
  require(x && bank && offsets && row_scale && lse && max0, "segment_lse_cuda: null device pointer");
  a.x = as_ptr<const void>(x);
  a.ldx = ldx;
  a.bank = as_ptr<const void>(bank);
  a.ldb = ldb;
  a.B = B;
  a.N = N;
  a.D = D;
  a.offsets = as_ptr<const int64_t>(offsets);
  a.S = S;
  a.row_scale = as_ptr<const float>(row_scale);
  a.lse = as_ptr<float>(lse);
  a.max0 = as_ptr<float>(max0);
  a.argmax0 = argmax0 ? as_ptr<int64_t>(argmax0) : nullptr;
  a.plan.splits = splits;
  a.plan.chunk = chunk;
  a.workspace = workspace ? as_ptr<void>(workspace) : nullptr;
  a.workspace_bytes = workspace_bytes;
  a.plan.workspace_bytes = workspace_bytes;
  a.stream = as_ptr<void>(stream);
  require(sm90_programs >= 0 && sm90_splits0 >= 0, "segment_lse_cuda: sm90_programs and sm90_splits0 must be >= 0");
  a.sm90_programs = sm90_programs;
  a.sm90_splits0 = sm90_splits0;
  std::string err, path;
  a.path = &path;
  {
    py::gil_scoped_release nogil;
    err = fc::segment_lse(a);
  }
  if (!err.empty()) throw std::runtime_error(err);
  return path;
}

fc::HeadConfig head_config(const std::string& method, int64_t num_id, int64_t groups, double temperature,
                           bool normalize) {
  fc::HeadConfig c;
  if (method == "neglabel") c.method = fc::HeadMethod::kNegLabel;
  else if (method == "mcm") c.method = fc::HeadMethod::kMcm;
  else throw py::value_error("method must be 'neglabel' or 'mcm', got '" + method + "'");
  c.num_id = num_id;
  c.groups = groups;
  c.temperature = static_cast<float>(temperature);
  c.normalize = normalize;
  return c;
}

int64_t cuda_head_workspace_bytes(const std::string& method, int64_t num_id, int64_t groups, double temperature,
                                  bool normalize, int64_t B, int64_t N) {
  const fc::HeadConfig c = head_config(method, num_id, groups, temperature, normalize);
  const std::string why = fc::head_check(c, N);
  require(why.empty(), why);
  require(B >= 1, "B must be >= 1");
  return fc::head_workspace_bytes(c, B, N);
}

std::string head_score_cuda(const std::string& dtype, uintptr_t x, int64_t ldx, uintptr_t bank, int64_t ldb, int64_t B,
                     int64_t N, int64_t D, const std::string& method, int64_t num_id, int64_t groups,
                     double temperature, bool normalize, uintptr_t score, uintptr_t pred, uintptr_t workspace,
                     int64_t workspace_bytes, int sm_count, uintptr_t stream) {
  fc::HeadArgs a;
  a.dtype = parse_dtype(dtype);
  a.cfg = head_config(method, num_id, groups, temperature, normalize);
  const std::string why = fc::head_check(a.cfg, N);
  require(why.empty(), why);
  require(B >= 1 && D >= 1, "head_score_cuda: B and D must be >= 1");
  require(x && bank && score && workspace, "head_score_cuda: null device pointer");
  a.x = as_ptr<const void>(x);
  a.ldx = ldx;
  a.bank = as_ptr<const void>(bank);
  a.ldb = ldb;
  a.B = B;
  a.N = N;
  a.D = D;
  a.score = as_ptr<float>(score);
  a.pred = pred ? as_ptr<int32_t>(pred) : nullptr;
  a.workspace = as_ptr<void>(workspace);
  a.workspace_bytes = workspace_bytes;
  a.sm_count = sm_count;
  a.stream = as_ptr<void>(stream);
  std::string err, path;
  a.path = &path;
  {
    py::gil_scoped_release nogil;
    err = fc::head_score(a);
  }
  if (!err.empty()) throw std::runtime_error(err);
  return path;
}

void register_cuda(py::module_& m) {
  m.def("cuda_runtime_version", &fc::runtime_version, "CUDART_VERSION the CUDA kernels were built with.");
  m.def("cuda_plan_splits", &cuda_plan_splits, py::arg("B"), py::arg("N"), py::arg("S"), py::arg("sm_count"),
        py::arg("blocks_per_sm"), py::arg("num_splits") = 0,
        py::arg("max_workspace_bytes") = fc::kDefaultSplitWorkspaceBytes,
        "Split of the N bank columns for the CUDA segmented-LSE kernel: (splits, chunk, workspace_bytes); "
        "blocks_per_sm from cuda_fwd_blocks_per_sm.");
  m.def("cuda_fwd_blocks_per_sm", &cuda_fwd_blocks_per_sm, py::arg("dtype"), py::arg("vector_loads"),
        "Resident blocks per SM of the forward kernel for (dtype, vector_loads) on the current device "
        "(cudaOccupancyMaxActiveBlocksPerMultiprocessor); RuntimeError without a device.");
  m.def("cuda_fwd_vector_loads", &cuda_fwd_vector_loads, py::arg("x"), py::arg("ldx"), py::arg("bank"),
        py::arg("ldb"), py::arg("D"),
        "True when segment_lse_cuda launches the 16-byte vector-load forward kernel for these operands.");
  m.def("segment_lse_cuda", &segment_lse_cuda, py::arg("dtype"), py::arg("x"), py::arg("ldx"), py::arg("bank"),
        py::arg("ldb"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("offsets"), py::arg("S"),
        py::arg("row_scale"), py::arg("lse"), py::arg("max0"), py::arg("argmax0"), py::arg("splits"),
        py::arg("chunk"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
        py::arg("sm90_programs") = 0, py::arg("sm90_splits0") = 0,
        R"doc(Enqueue the segmented-LSE kernel(s) on `stream` (a cudaStream_t as int); returns the path
that ran ("sm90 tma", "sm90 ptr: ...", "aot (...)", "cuda (...)"; FASTOOD_CUDA_PATH forces one).

All pointers are device addresses as ints (0 = None for argmax0 / workspace); x (B, D) and
bank (N, D) have unit stride along D and row strides ldx / ldb (elements); offsets (S+1,)
int64 (validated by the caller); row_scale (B,) f32; lse (B, S) f32 row-major; max0 (B,) f32;
argmax0 (B,) int64. (splits, chunk, workspace_bytes) from cuda_plan_splits, (sm90_programs,
sm90_splits0) from cuda_sm90_request; the workspace must hold the larger of the two byte counts
and be 256-byte aligned. Asynchronous: errors of the launch itself raise RuntimeError.)doc");
  m.def("cuda_sm90_request", &cuda_sm90_request, py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("S"),
        py::arg("sm_count"), py::arg("num_splits") = 0, py::arg("max_bytes") = 2 * fc::kDefaultSplitWorkspaceBytes,
        "(programs, splits0, workspace_bytes) of the Hopper AOT sequence for this problem on the current device "
        "(the hot kernel's stream-K programs and segment 0's splits; num_splits > 0 forces splits0; partials "
        "fitted to max_bytes), or None when this build embeds no sm90 "
        "kernel set for the device and dtype.");
  m.def("cuda_sm90_workspace_bound", &fc::sm90_workspace_bound, py::arg("B"), py::arg("N"), py::arg("S"),
        py::arg("max_partials_bytes"),
        "Device-independent bound on the sm90 sequence's workspace over the embedded sm90 kernel sets "
        "(0 when none): what head_workspace_bytes reserves for it.");
  m.def("cuda_head_workspace_bytes", &cuda_head_workspace_bytes, py::arg("method"), py::arg("num_id"),
        py::arg("groups"), py::arg("temperature"), py::arg("normalize"), py::arg("B"), py::arg("N"),
        "Workspace bytes of head_score_cuda for B rows (non-decreasing in B: the size for the largest batch "
        "covers all smaller ones).");
  m.def("head_score_cuda", &head_score_cuda, py::arg("dtype"), py::arg("x"), py::arg("ldx"), py::arg("bank"),
        py::arg("ldb"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("method"), py::arg("num_id"),
        py::arg("groups"), py::arg("temperature"), py::arg("normalize"), py::arg("score"), py::arg("pred"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("sm_count"), py::arg("stream"),
        R"doc(The TensorRT plugin's computation (NegLabel / MCM score + int32 prediction) on raw
device pointers: score (B,) f32, pred (B,) int32 or 0; returns segment_lse's path. For tests of the
plugin path without TensorRT.)doc");
}
#endif  // FASTOOD_WITH_CUDA
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastood compiled kernels (CPU: OpenMP C++; CUDA when built with nvcc)";

  m.def("segment_lse_reduce", &segment_lse_reduce, py::arg("logits"), py::arg("offsets"), py::arg("lse"),
        py::arg("max0"), py::arg("argmax0") = py::none(), py::arg("num_threads") = 0, py::arg("isa") = "auto",
        R"doc(Segmented log-sum-exp of a block of fp32 logits, written into the given arrays.

logits (R, N) float32, unit column stride; offsets (S+1,) int64, 0 = off[0] <= ... <= off[S] = N;
lse (R, S) float32 out: log sum exp per segment (-inf if empty); max0 (R,) float32 out: max over
segment 0 (-inf if empty); argmax0 (R,) int64 out or None: first index of that max (0 if empty).
NaN propagates (torch semantics). num_threads <= 0 uses the OpenMP default. isa: 'auto',
'generic' or 'avx2'. Releases the GIL.)doc");
  m.def("segment_lse_bwd_weights", &segment_lse_bwd_weights, py::arg("logits"), py::arg("offsets"), py::arg("lse"),
        py::arg("g"), py::arg("arg0") = py::none(), py::arg("h") = py::none(), py::arg("num_threads") = 0,
        R"doc(Backward of segment_lse_reduce, in place: logits (R, N) float32 or float64 become
G[r, j] = g[r, s(j)] * exp(logits[r, j] - lse[r, s(j)]) (+ h[r] at j = arg0[r]); lse, g (R, S) and h (R,)
in the logits' dtype, arg0 (R,) int64 or None. Releases the GIL.)doc");
  m.def("cuda_available", &cuda_available, "True when this build contains the CUDA kernels.");
  m.def("openmp_threads", &openmp_threads, "omp_get_max_threads() (1 without OpenMP).");
  m.def("build_info", &build_info, "Compiler, OpenMP, CUDA and SIMD facts of this build.");
  m.def("cpu_isa", []() { return std::string(fastood::cpu::resolved_isa_name(Isa::Auto)); },
        "The SIMD path the CPU kernels use on this machine ('avx2-fma' or 'generic').");

#ifdef FASTOOD_WITH_CUDA
  register_cuda(m);
#endif
}

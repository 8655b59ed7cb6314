// pybind11 module `fastood._C`: the compiled kernels, no libtorch link.
//
// CPU: `segment_lse_reduce` takes NumPy views of torch CPU tensors
// (`tensor.numpy()` is zero-copy) and reduces a block of fp32 logits in place
// into the caller's output arrays, with the GIL released.
//
// CUDA kernels (csrc/cuda/*.cu, built when CMake finds nvcc, FASTOOD_WITH_CUDA)
// add their functions by defining `fastood_register_cuda(py::module_&)`; it is
// declared weak here, so the module builds and loads with or without them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/segment_lse.h"

namespace py = pybind11;

#if defined(FASTOOD_WITH_CUDA) && (defined(__GNUC__) || defined(__clang__))
void fastood_register_cuda(py::module_& m) __attribute__((weak));
#endif

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
  m.def("cuda_available", &cuda_available, "True when this build contains the CUDA kernels.");
  m.def("openmp_threads", &openmp_threads, "omp_get_max_threads() (1 without OpenMP).");
  m.def("build_info", &build_info, "Compiler, OpenMP, CUDA and SIMD facts of this build.");
  m.def("cpu_isa", []() { return std::string(fastood::cpu::resolved_isa_name(Isa::Auto)); },
        "The SIMD path the CPU kernels use on this machine ('avx2-fma' or 'generic').");

#ifdef FASTOOD_WITH_CUDA
#if defined(__GNUC__) || defined(__clang__)
  if (fastood_register_cuda) fastood_register_cuda(m);
#endif
#endif
}

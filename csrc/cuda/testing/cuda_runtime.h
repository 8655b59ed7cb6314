// TEST ONLY — stands in for <cuda_runtime.h> when csrc/cuda/*.cu is compiled by a host
// compiler for the CPU emulator (fastood_emu.h says how it works). It keeps the real
// toolkit's types and API declarations (cuda_runtime_api.h: cudaError_t, dim3, uint4,
// CUDART_VERSION …) and replaces the CUDA keywords with their emulated meaning.
#pragma once

#include <cuda_runtime_api.h>  // the real declarations; fastood_emu.cpp defines the few the kernels call

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fastood_emu.h"

// Execution-space keywords mean nothing on the host; shared memory is one static per
// kernel, shared by the (sequentially run) block's threads.
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __launch_bounds__
#undef __forceinline__
#define __host__
#define __device__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)
#define __forceinline__ inline

// Device math the kernels call unqualified (CUDA puts these in the global namespace).
using std::isfinite;
using std::isnan;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// Correctly rounded fp32 product (never contracted into an FMA by nvcc). The host
// compiler's `*` is the same IEEE product; tests/cuda_emulator.py builds with
// -ffp-contract=off so that g++ does not contract it either.
inline float __fmul_rn(float a, float b) { return a * b; }

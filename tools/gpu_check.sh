#!/usr/bin/env bash
# One command for a lent GPU machine (no network; Python 3.12, torch, triton, nvcc,
# cmake, ninja, pybind11, scikit-build-core there): install the wheels that are
# missing from WHEEL_DIR, build fastood with its CUDA kernels, run the GPU tests
# (the CUDA C++ kernel's tests first, under compute-sanitizer memcheck/racecheck
# when it is there; then the whole suite, which runs its backends on CUDA tensors)
# and the GPU benchmarks, and leave logs + results in OUT_DIR.
#
#   tools/gpu_check.sh OUT_DIR [WHEEL_DIR] [--quick]
#   BENCH_SUITES="scores cma" tools/gpu_check.sh OUT_DIR ...   (a subset of the benchmark suites)
#
# WHEEL_DIR: wheels to install with --no-deps (e.g. open_clip_torch, ftfy),
# fetched beforehand on a machine with network:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       open_clip_torch ftfy regex huggingface_hub timm safetensors tqdm
set -uo pipefail
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR [WHEEL_DIR] [--quick]}
WHEELS=${2:-}
QUICK=""
for a in "$@"; do [ "$a" = "--quick" ] && QUICK="--quick"; done
[ "$WHEELS" = "--quick" ] && WHEELS=""
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
} | tee "$OUT/env.txt"

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "== installing wheels from $WHEELS"
  $PY -m pip install -q --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tee "$OUT/wheels.log" || status=1
fi

echo "== building fastood (CUDA kernels on)"
FASTOOD_CUDA=ON $PY -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
  || FASTOOD_CUDA=AUTO $PY -m pip install --no-build-isolation --no-deps -e . >>"$OUT/build.log" 2>&1 \
  || { echo "build failed: see build.log"; tail -30 "$OUT/build.log"; exit 1; }
$PY -c "import fastood, json; print(json.dumps({k: [v.available, v.reason] for k, v in fastood.backends().items()}, indent=1))" | tee "$OUT/backends.txt"

echo "== CUDA C++ kernel: tests, then memcheck / racecheck on a small subset"
# The CUDA kernel's own tests first (a fast signal; the whole suite below runs them again).
$PY -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_cuda_kernel.py 2>&1 | tee "$OUT/cuda_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if command -v compute-sanitizer >/dev/null 2>&1; then
  # Out-of-bounds / misaligned accesses (tile edges, scalar-load path, splits) and shared-memory races.
  # The [gpu] cases only: the [emu] ones run the CPU emulator, which has its own sanitizers.
  SUBSET="gpu and ((tile_edges and fp16 and B131) or misaligned or argmax_ties or (plugin_head_matches and B37))"
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 99 \
      $PY -m pytest -q -p no:cacheprovider -x tests/test_cuda_kernel.py -k "$SUBSET" >"$OUT/cuda_$tool.log" 2>&1
    rc=$?; echo "compute-sanitizer $tool: exit $rc" | tee -a "$OUT/cuda_tests.log"; [ "$rc" -eq 0 ] || status=1
  done
else
  echo "compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$OUT/cuda_tests.log"
fi

echo "== tests on the GPU"
$PY -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmarks on the GPU"
# bench/scores.py times every available backend: fastood-triton and fastood-cuda side by side.
# BENCH_SUITES picks suites (default: all GPU suites; scores first, the one the kernels are judged by).
# images / export / bank need open_clip (WHEEL_DIR); a failing suite is logged and the next one runs.
for suite in ${BENCH_SUITES:-scores cma images export bank knn train}; do
  echo "-- bench $suite"
  $PY -m bench "$suite" --device cuda $QUICK 2>&1 | tee "$OUT/bench_$suite.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "== speed-of-light model: predicted vs measured ($($PY -c 'import triton; print("triton", triton.__version__)' 2>&1))"
# bench/sol.py compiles the scoring kernel's configs, predicts from their SASS and measures the
# same shapes on this GPU (Triton kernel and torch.compile path): the first calibration of the model.
$PY -m bench sol --device cuda $QUICK 2>&1 | tee "$OUT/sol.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
cp bench/results/*.json bench/results/*.md "$OUT/" 2>/dev/null
echo "== done (status $status); results in $OUT"
exit $status

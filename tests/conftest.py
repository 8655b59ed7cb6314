"""Test configuration.

Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be
switched on before triton (and so fastood) is imported.

``FASTOOD_REQUIRE_EMU=1`` (set by ``.ci/run``): the CUDA-emulator tests — every ``[emu]``
kernel case, the ThreadSanitizer / AddressSanitizer + UBSan runs and the TensorRT plugin
harness (``tests/test_cuda_emulator.py``) — must run: a skip of one of them (no g++, no
CUDA headers, no sanitizer runtime, a sanitizer that cannot start) becomes a failure
naming the reason, as ``FASTOOD_REQUIRE_EXT=1`` does for the C++ extension. The only
skips kept are the intended ones in :data:`INTENDED_EMU_SKIPS`.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


#: skip reasons of emulator tests that are a choice of the test, not a missing tool
INTENDED_EMU_SKIPS = ("one 128-row block is enough on the emulator",)


def is_emulator_test(item) -> bool:
    """The tests FASTOOD_REQUIRE_EMU covers: tests/test_cuda_emulator.py, every test using
    the emulated kernels (the ``emulator_exe`` fixture) and every ``kernel="emu"`` case."""
    if item.path.name == "test_cuda_emulator.py":
        return True
    if "emulator_exe" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("kernel") == "emu"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("FASTOOD_REQUIRE_EMU") == "1" and is_emulator_test(item)):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if any(r in reason for r in INTENDED_EMU_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"FASTOOD_REQUIRE_EMU=1 but this CUDA-emulator test was skipped: {reason}\n"
                       "(the emulator needs g++ with libtsan / libasan / libubsan and the CUDA toolkit's headers: "
                       "nvcc on the PATH, $CUDA_HOME or /usr/local/cuda; see README 'Testing')")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def emulator_exe(tmp_path_factory):
    """The CUDA kernels built once per session for the CPU emulator (tests/cuda_emulator.py)."""
    from tests import cuda_emulator

    if not cuda_emulator.available():
        pytest.skip("the CPU emulator needs g++ and the CUDA headers")
    return cuda_emulator.build(tmp_path_factory.mktemp("cuda_emulator"), "plain")

"""Test configuration.

Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be
switched on before triton (and so fastood) is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


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

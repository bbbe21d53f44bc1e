"""Test setup: Triton runs in its CPU interpreter unless a GPU is present.

``TRITON_INTERPRET`` must be set before the kernels are defined, so it is set here,
before anything imports ``step.kernels``. Tests marked ``gpu`` need a CUDA GPU of compute
capability >= 8.0 and are skipped cleanly without one.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from step.ops.dispatch import backend_status  # noqa: E402

_TRITON_ON_GPU = backend_status("triton", "cuda") if torch.cuda.is_available() else None
HAS_GPU = _TRITON_ON_GPU is not None and _TRITON_ON_GPU.available


def _gpu_skip_reason() -> str:
    # On a machine with a GPU, say why it cannot run the kernels (an old GPU, or a Triton
    # that failed to load) instead of a reason that would hide the failure.
    if _TRITON_ON_GPU is None:
        return "needs a CUDA GPU with compute capability >= 8.0"
    return f"a CUDA GPU is present but cannot run the kernels: {_TRITON_ON_GPU.reason}"


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason=_gpu_skip_reason())
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

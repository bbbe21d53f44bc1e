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

HAS_GPU = torch.cuda.is_available() and backend_status("triton", "cuda").available


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with compute capability >= 8.0")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

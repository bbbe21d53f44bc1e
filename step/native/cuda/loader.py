"""Compile ``csrc/*.cu`` with CuPy's NVRTC at first use and launch kernels on torch tensors.

CuPy caches the compiled binaries on disk (``~/.cupy/kernel_cache``); this module keeps
one :class:`cupy.RawModule` per (source file, compute capability) in process. CuPy is
imported lazily, on the first launch, so ``import step`` works without it.

Kernels run on PyTorch's current stream of the tensors' device and take tensors without
copies (their device pointers). Scalars must be NumPy scalars of the kernel's parameter
type (``numpy.int64`` for ``long long``, ``numpy.int32`` for ``int``): CuPy passes a
scalar by its NumPy type, so a plain Python int would not match a 32-bit parameter.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch

from ..sources import csrc_dir

MIN_CAPABILITY = (8, 0)
CUPY_HINT = "pip install 'step-sparsity[cuda]'"
DEFAULT_SHARED_MEM = 48 * 1024
"""Dynamic shared memory a kernel may use without opting in (bytes)."""


def _cupy():
    try:
        import cupy
    except ImportError as err:
        raise ImportError(
            f"step's CUDA backend needs CuPy, which is not installed: {CUPY_HINT} "
            "(installs cupy-cuda13x), or use another backend (STEP_BACKEND=triton)"
        ) from err
    return cupy


def _capability(index: int) -> tuple[int, int]:
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        raise RuntimeError(
            f"{torch.cuda.get_device_name(index)} (cuda:{index}) has compute capability "
            f"{cap[0]}.{cap[1]}; step's CUDA kernels need 8.0 or newer (Ampere, Hopper)"
        )
    return cap


def nvrtc_options(capability: tuple[int, int]) -> tuple[str, ...]:
    """NVRTC options for a device of ``capability`` (CuPy adds a few of its own)."""
    major, minor = capability
    return ("-std=c++17", f"-arch=sm_{major}{minor}", "-I", str(csrc_dir()))


def module_source(filename: str) -> str:
    """Source of ``csrc/<filename>`` as compiled.

    CuPy's disk cache is keyed on the source text and options only, not on the headers
    the source includes, so a digest of every header is appended to the text (at the end,
    so that compiler messages keep their line numbers): editing a ``.cuh`` then recompiles.
    """
    src_dir = csrc_dir()
    digest = hashlib.sha256()
    for header in sorted([*src_dir.glob("*.cuh"), *src_dir.glob("*.h")]):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    code = (src_dir / filename).read_text()
    return f"{code.rstrip()}\n// step csrc headers: {digest.hexdigest()}\n"


@functools.cache
def load_module(filename: str, capability: tuple[int, int]):
    """The ``cupy.RawModule`` of ``csrc/<filename>`` for devices of ``capability``."""
    if not (Path(csrc_dir()) / filename).is_file():
        raise FileNotFoundError(f"no CUDA source {filename!r} in {csrc_dir()}")
    cupy = _cupy()
    return cupy.RawModule(
        code=module_source(filename), options=nvrtc_options(capability), name_expressions=None
    )


@functools.cache
def _kernel(filename: str, capability: tuple[int, int], name: str, index: int):
    cupy = _cupy()
    with cupy.cuda.Device(index):
        return load_module(filename, capability).get_function(name)


def _stream(cupy, index: int):
    torch_stream = torch.cuda.current_stream(index)
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(torch_stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(torch_stream)
    return cupy.cuda.ExternalStream(torch_stream.cuda_stream, index)


def _kernel_arg(arg, index: int):
    if isinstance(arg, torch.Tensor):
        if arg.device != torch.device("cuda", index):
            raise ValueError(f"kernel argument on {arg.device}, expected cuda:{index}")
        return np.uint64(arg.data_ptr())
    if isinstance(arg, np.generic):
        return arg
    raise TypeError(
        f"kernel arguments must be CUDA tensors or NumPy scalars (e.g. numpy.int32(n)), "
        f"got {type(arg).__name__}"
    )


def launch(
    filename: str,
    kernel: str,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: tuple,
    *,
    device: torch.device,
    shared_mem: int = 0,
) -> None:
    """Launch ``kernel`` of ``csrc/<filename>`` on ``device``'s current PyTorch stream.

    ``args``: CUDA tensors (passed as device pointers, no copy; they must be on
    ``device`` and laid out as the kernel expects) and NumPy scalars. ``shared_mem``:
    bytes of dynamic shared memory; above 48 KiB the kernel is opted in first.
    """
    if device.type != "cuda":
        raise ValueError(f"CUDA kernels need CUDA tensors, got device {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability = _capability(index)
    cupy = _cupy()
    fn = _kernel(filename, capability, kernel, index)
    kernel_args = tuple(_kernel_arg(a, index) for a in args)
    with cupy.cuda.Device(index):
        if shared_mem > DEFAULT_SHARED_MEM and fn.max_dynamic_shared_size_bytes < shared_mem:
            fn.max_dynamic_shared_size_bytes = shared_mem
        fn(grid, block, kernel_args, stream=_stream(cupy, index), shared_mem=shared_mem)

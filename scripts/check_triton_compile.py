#!/usr/bin/env python
"""Compile every Triton kernel of ``step.kernels`` for sm_80 and sm_90a, with no GPU.

The test suite runs the kernels under Triton's CPU interpreter, which checks what they
compute but not whether Triton's GPU compiler accepts them: shapes ``tl.dot`` refuses,
layouts the compiler cannot lower or a shared-memory request above the hardware's limit
would only show on a GPU. Here every launcher runs on small CPU tensors with Triton's
launch replaced by an ahead-of-time compile for the chosen GPU target (nothing executes),
covering the dtypes, N:M ratios and tile branches the launchers can take. For each
compiled kernel it reports warps, pipeline stages, shared memory, registers, local
memory (spills) and the tensor-core instruction in the SASS. It fails on a compile error
or on shared memory above the architecture's per-block limit.

    python scripts/check_triton_compile.py [--arch 80 90] [--only TEXT] [--json P] [--markdown P]

Needs the package installed (``step.kernels``) and Triton's NVIDIA backend (bundled with
the Triton wheel: ptxas and cuobjdump come with it). Triton's own disk cache makes
repeated runs fast. Works with Triton 3.6.0 (the GPU machines') and 3.9.0; to check
another Triton than the installed one, install it aside and put it first on the path
(the worker processes inherit it; the run stops if they import another version):

    pip install --no-deps --target /tmp/triton-3.6.0 triton==3.6.0
    PYTHONPATH=/tmp/triton-3.6.0 python scripts/check_triton_compile.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context

# dynamic shared memory one block may use (CUDA programming guide, compute capabilities)
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
SM_COUNT = {80: 108, 86: 84, 89: 128, 90: 132}  # A100, RTX 3090 / 4090-class, H100 SXM
ALL_NM = ((1, 2), (2, 4), (1, 4), (2, 8), (1, 8), (4, 8), (16, 32))
SOME_NM = ((2, 4), (1, 8))


@dataclass
class Compiled:
    """One kernel compiled for one case (``error`` set when the compile failed)."""

    arch: int
    case: str
    kernel: str = ""
    warps: int = 0
    stages: int = 0
    shared: int = 0
    registers: int | None = None
    local: int | None = None  # local memory per thread, bytes: spills and stack
    tensor_cores: str = ""
    seconds: float = 0.0
    error: str | None = None

    def problems(self) -> list[str]:
        if self.error:
            return [f"compile error: {self.error}"]
        limit = SHARED_LIMIT.get(self.arch)
        if limit is not None and self.shared > limit:
            return [f"shared memory {self.shared} B > the sm_{self.arch} limit of {limit} B"]
        return []


@dataclass
class Case:
    label: str
    call: Callable[[], object]


# ------------------------------------------------------------------ the launchers' cases


def cases() -> list[Case]:
    """Every launcher over the dtypes, N:M ratios and tile branches it can take.

    Token counts: 1 (Triton specialises an integer equal to 1), 4 (the decode tiles,
    <= 16 tokens), 64, 100 (one 128-token block: the mask ranked in the matmul) and 200
    (the mask ranked first). Decode tiles are sized for the target's SM count: 16 rows for
    these 128-row weights, 64 rows for the one wide case. float32 matmuls run once more
    with TF32 allowed (``tf32`` cases: tensor cores instead of FMA). The contents are
    never read.
    """
    import torch
    from step.kernels.adam_update import adam_update_triton
    from step.kernels.masked_linear import masked_linear_dx_triton, masked_linear_triton
    from step.kernels.nm_compress import nm_compress_triton, nm_decompress_triton
    from step.kernels.nm_linear import nm_linear_triton
    from step.kernels.nm_mask import nm_mask_triton
    from step.kernels.nm_positions import pack_positions, words_per_row
    from step.kernels.nm_soft_threshold import nm_soft_threshold_triton
    from step.kernels.sparse24_linear import sparse24_linear_triton
    from step.kernels.sparse24_pack import from_sparse24_triton, to_sparse24_triton

    from step.ops.nm_compress import nm_compress_ref
    from step.ops.sparse24 import to_sparse24_ref

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    out: list[Case] = []

    def add(label: str, fn: Callable, *args) -> None:
        out.append(Case(label, lambda: fn(*args)))

    def w(rows: int, cols: int, dt: torch.dtype) -> torch.Tensor:
        return torch.randn(rows, cols).to(dt)

    def tf32(fn: Callable) -> Callable:
        """``fn`` run with TF32 allowed for float32 matmuls (``step.kernels.dot_precision``)."""

        def call(*args):
            allowed = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return fn(*args)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = allowed

        return call

    for name, dt in dtypes.items():
        for n, m in ALL_NM if name == "fp16" else SOME_NM:
            add(f"nm_mask {name} {n}:{m}", nm_mask_triton, w(64, 256, dt), n, m)
            add(f"nm_soft_threshold {name} {n}:{m}", nm_soft_threshold_triton,
                w(64, 256, dt), n, m)  # fmt: skip
            add(f"nm_compress {name} {n}:{m}", nm_compress_triton, w(64, 256, dt), n, m)
            vals, idx = nm_compress_ref(w(64, 256, dt), n, m)
            add(f"nm_decompress {name} {n}:{m}", nm_decompress_triton, vals, idx, n, m)

    for name, dt in dtypes.items():
        for n, m in ALL_NM if name == "fp16" else SOME_NM:
            for tokens in (1, 4, 64, 100, 200):
                weight = w(128, 256, dt)
                x = w(tokens, 256, dt)
                bias = w(1, 128, dt)[0]
                add(
                    f"masked_linear {name} {n}:{m} tokens={tokens}",
                    masked_linear_triton,
                    x,
                    weight,
                    n,
                    m,
                    bias,
                )
                mask = torch.ones(128, 256, dtype=torch.bool)
                add(
                    f"masked_linear given-mask {name} {n}:{m} tokens={tokens}",
                    masked_linear_triton,
                    x,
                    weight,
                    n,
                    m,
                    None,
                    mask,
                )
                add(
                    f"masked_linear_dx {name} {n}:{m} tokens={tokens}",
                    masked_linear_dx_triton,
                    w(tokens, 128, dt),
                    weight,
                    mask,
                    m,
                )
                vals, idx = nm_compress_ref(weight, n, m)
                add(
                    f"nm_linear {name} {n}:{m} tokens={tokens}",
                    nm_linear_triton,
                    x,
                    vals,
                    pack_positions(idx, m),
                    n,
                    m,
                    bias,
                )

    # float32 with TF32 allowed: the dots run on tensor cores (wgmma on sm_90), not FMA
    f32 = torch.float32
    for n, m in SOME_NM:
        weight, x, bias = w(128, 256, f32), w(64, 256, f32), w(1, 128, f32)[0]
        mask = torch.ones(128, 256, dtype=torch.bool)
        vals, idx = nm_compress_ref(weight, n, m)
        ratio = f"tf32 {n}:{m} tokens=64"
        add(f"masked_linear {ratio}", tf32(masked_linear_triton), x, weight, n, m, bias)
        add(f"masked_linear given-mask {ratio}", tf32(masked_linear_triton),
            x, weight, n, m, None, mask)  # fmt: skip
        add(f"masked_linear_dx {ratio}", tf32(masked_linear_dx_triton),
            w(64, 128, f32), weight, mask, m)  # fmt: skip
        add(f"nm_linear {ratio}", tf32(nm_linear_triton),
            x, vals, pack_positions(idx, m), n, m, bias)  # fmt: skip

    for name in ("fp16", "bf16"):
        dt = dtypes[name]
        add(f"to_sparse24 {name}", to_sparse24_triton, w(64, 256, dt))
        add(f"from_sparse24 {name}", from_sparse24_triton, *to_sparse24_ref(w(64, 256, dt)))
        for k_in in (192, 256):  # decode BK = 64 or 128
            vals, meta = to_sparse24_ref(w(128, k_in, dt))
            for tokens in (1, 4, 64, 100, 200):
                add(
                    f"sparse24_linear {name} K={k_in} tokens={tokens}",
                    sparse24_linear_triton,
                    w(tokens, k_in, dt),
                    vals,
                    meta,
                    w(1, 128, dt)[0],
                )

    # decode wide enough for the widest programs (64 rows; 32 for sparse24): 2 per SM
    wide = 128 * max(SM_COUNT.values())
    for n, m in ((2, 4), (1, 4)):
        vals = torch.zeros(wide, 256 // m * n, dtype=torch.float16)
        words = torch.zeros(wide, words_per_row(256 // m * n, m), dtype=torch.int32)
        add(f"nm_linear fp16 {n}:{m} tokens=4 N={wide}", nm_linear_triton,
            w(4, 256, torch.float16), vals, words, n, m, None)  # fmt: skip
    # decode with the K range split (16 row blocks of 1024 rows, 2048 columns)
    for name in ("fp16", "bf16"):
        for n, m in ((1, 2), (2, 4), (1, 4), (2, 8), (1, 8), (4, 8)):
            vals = torch.zeros(1024, 2048 // m * n, dtype=dtypes[name])
            words = torch.zeros(1024, words_per_row(2048 // m * n, m), dtype=torch.int32)
            add(f"nm_linear {name} {n}:{m} tokens=1 N=1024 K=2048 split", nm_linear_triton,
                w(1, 2048, dtypes[name]), vals, words, n, m, None)  # fmt: skip
    vals = torch.zeros(wide, 128, dtype=torch.float16)
    meta = torch.zeros(wide, 16, dtype=torch.int16)
    add(f"sparse24_linear fp16 K=256 tokens=4 N={wide}", sparse24_linear_triton,
        w(4, 256, torch.float16), vals, meta, None)  # fmt: skip

    phases = {  # (update_v, srste_decay, n, want_z, given masks)
        "dense AdamW": (True, 0.0, 0, False, False, False),
        "precondition": (True, 0.0, 0, True, False, False),
        "mask-learning 2:4": (False, 2e-4, 2, False, False, False),
        "mask-learning 1:8": (False, 2e-4, 1, False, False, False),
        "mask-learning given masks": (False, 2e-4, 2, False, True, False),
        "mask-learning 2:4 guarded": (False, 2e-4, 2, False, False, True),
    }
    for name, dt in dtypes.items():
        for phase, (update_v, decay, n, want_z, given, guard) in phases.items():
            m = 8 if n == 1 else 4
            params = [w(64, 256, dt), w(32, 64, dt)]
            grads = [torch.randn_like(p) for p in params]
            states = [[torch.zeros(p.shape) for p in params] for _ in range(2)]
            masks = [torch.ones(p.shape, dtype=torch.bool) for p in params] if given else None
            add(
                f"adam_update {name} {phase}",
                adam_update_triton,
                params,
                grads,
                *states,
                1e-3,
                0.9,
                0.999,
                1e-8,
                0.01,
                3,
                3,
                update_v,
                decay,
                n,
                m,
                want_z,
                masks,
                [1e-6, 1e-6] if guard else None,
            )
    return out


# --------------------------------------------------------------- compiling instead of launching


class _TargetOnlyDriver:
    """The part of a Triton driver a compile-only launch needs, for a GPU that is not here."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.target.arch  # one kernel cache per target, not per GPU

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[list]:
    """Within the block, launching a Triton kernel compiles it for ``sm_<arch>`` and runs
    nothing; yields the list of ``(kernel name, CompiledKernel, seconds)`` compiled."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    compiled: list = []
    launch = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        start = time.perf_counter()
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel, time.perf_counter() - start))
        return kernel

    driver.set_active(_TargetOnlyDriver(arch))
    JITFunction.run = run
    try:
        yield compiled
    finally:
        JITFunction.run = launch
        driver.set_active(None)  # the real driver again, created when next needed


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    import triton

    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [tool, *flags, f.name], capture_output=True, text=True, check=True
        ).stdout


def describe(arch: int, label: str, name: str, kernel, seconds: float) -> Compiled:
    """Resources of one compiled kernel, read from its metadata and its cubin."""
    rec = Compiled(
        arch,
        label,
        name,
        kernel.metadata.num_warps,
        kernel.metadata.num_stages,
        kernel.metadata.shared,
        seconds=round(seconds, 2),
    )
    dump = _cuobjdump(kernel.asm["cubin"], "--dump-resource-usage", "-sass")
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", dump)
    if usage:
        rec.registers = int(usage[1])
        rec.local = int(usage[2]) + int(usage[3])
    rec.tensor_cores = "wgmma" if "HGMMA" in dump else "mma" if "HMMA" in dump else "-"
    return rec


def compile_arch(arch: int, only: str = "") -> list[Compiled]:
    """Compile every case whose label contains ``only`` for ``sm_<arch>``.

    Run it in a fresh process: ``step.kernels`` must be imported here for the first time,
    with the interpreter off, or its kernels are the interpreter's.
    """
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, unwarned
    from step.kernels import linear_io

    # decode tiles depend on the SM count: size them for the target (the device is a CPU)
    linear_io._sm_count = lambda device: SM_COUNT.get(arch, 132)
    records = []
    for case in cases():
        if only not in case.label:
            continue
        error = None
        with compile_only(arch) as compiled:
            try:
                case.call()
            except Exception as e:  # a compile error: record it, go on with the others
                text = str(e).strip().splitlines()
                error = f"{type(e).__name__}: " + (text[-1] if text else "")
        records += [describe(arch, case.label, *c) for c in compiled]
        if error or not compiled:
            records.append(Compiled(arch, case.label, error=error or "no kernel was launched"))
    return records


def triton_in_worker() -> tuple[str, str]:
    """``(version, folder)`` of the Triton a worker process imports: the one ``PYTHONPATH``
    puts first (the spawned workers inherit the environment), as in this process."""
    import triton

    return triton.__version__, os.path.dirname(triton.__file__)


# ------------------------------------------------------------------------------ reporting


def markdown(records: list[Compiled], header: dict) -> str:
    lines = ["# Triton kernels compiled for GPU targets (no GPU used)", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Local memory is per thread (spills and stack); shared memory per block.", ""]
    for arch in sorted({r.arch for r in records}):
        lines += [
            f"## sm_{arch}",
            "",
            "| case | kernel | warps | stages | shared KB | regs | local B | tensor cores |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in (r for r in records if r.arch == arch):
            if r.error:
                lines.append(f"| {r.case} | **{r.error}** | | | | | | |")
                continue
            lines.append(
                f"| {r.case} | {r.kernel} | {r.warps} | {r.stages} | "
                f"{r.shared / 1024:.0f} | {r.registers} | {r.local} | {r.tensor_cores} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=[80, 90],
        help="compute capabilities to compile for (default: 80 90)",
    )
    parser.add_argument("--only", default="", help="compile only cases whose label has this")
    parser.add_argument("--json", help="write every record to this JSON file")
    parser.add_argument("--markdown", help="write the tables to this Markdown file")
    args = parser.parse_args(argv)

    import torch
    import triton
    from triton.backends import backends

    if "nvidia" not in backends:
        print("Triton has no NVIDIA backend here: skipping the compile check")
        return 0
    start = time.perf_counter()
    with ProcessPoolExecutor(
        max_workers=min(len(args.arch), os.cpu_count() or 1), mp_context=get_context("spawn")
    ) as pool:
        version, where = pool.submit(triton_in_worker).result()
        print(f"compiling with triton {version} from {where}")
        if version != triton.__version__:  # the workers must compile with the Triton reported
            print(f"the workers import triton {version}, this process {triton.__version__}",
                  file=sys.stderr)  # fmt: skip
            return 2
        records = [
            r for rs in pool.map(compile_arch, args.arch, [args.only] * len(args.arch)) for r in rs
        ]
    if not records:
        print(f"no case matches --only {args.only!r}", file=sys.stderr)
        return 2
    header = {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "targets": ", ".join(f"sm_{a}" for a in args.arch),
        "cases": len({r.case for r in records}),
        "kernels compiled": len(records),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "records": [asdict(r) for r in records]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(records, header))

    spills = [r for r in records if r.local]
    failures = [(r, p) for r in records for p in r.problems()]
    print(
        f"{len(records)} kernels compiled for {header['targets']} in "
        f"{time.perf_counter() - start:.0f} s; {len(spills)} use local memory"
    )
    for r in spills:
        print(f"  note: sm_{r.arch} {r.case} ({r.kernel}): {r.local} B of local memory per thread")
    for r, problem in failures:
        print(f"FAIL sm_{r.arch} {r.case}: {problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

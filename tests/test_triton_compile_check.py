"""scripts/check_triton_compile.py: Triton kernels compiled for GPU targets with no GPU.

The full check runs in CI as its own step; these tests make sure it compiles for real
(registers and shared memory read back from the cubin) and that it fails loudly.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_triton_compile.py"

pytest.importorskip("triton.backends.nvidia", reason="Triton without its NVIDIA backend")


def load_script():
    spec = importlib.util.spec_from_file_location("check_triton_compile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    """Python with ``args`` in a fresh process, from the checkout, the interpreter off."""
    cmd = [sys.executable, *args]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_compiles_a_kernel_for_sm80_and_reads_its_resources(tmp_path):
    out = tmp_path / "records.json"
    proc = run(str(SCRIPT), "--arch", "80", "--only", "nm_mask fp16 2:4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(out.read_text())["records"]
    assert rec["kernel"] == "_nm_mask_kernel" and rec["arch"] == 80 and rec["error"] is None
    assert 0 < rec["registers"] <= 255 and rec["warps"] == 4
    assert rec["local"] == 0 and rec["tensor_cores"] == "-"


def test_a_matmul_kernel_uses_tensor_cores_on_sm90(tmp_path):
    out = tmp_path / "records.json"
    case = "sparse24_linear fp16 K=256 tokens=64"
    proc = run(str(SCRIPT), "--arch", "90", "--only", case, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(out.read_text())["records"]
    assert rec["tensor_cores"] == "wgmma" and rec["shared"] > 0


def test_masked_linear_feeds_tensor_cores_unreshaped_tiles():
    # Triton 3.6.0 could not compile a [rows, BG, MP] tile reshaped into a wgmma operand
    # (its OptimizeDotOperands moved the reshape into shared memory, giving a layout it
    # then rejected), so the tensor-core path loads flat [rows, BG * MP] tiles
    code = """
import sys
sys.path.insert(0, "scripts")  # the checkout is the working directory
import check_triton_compile as check
wanted = ("masked_linear given-mask bf16 2:4 tokens=64", "masked_linear_dx fp16 2:4 tokens=64")
for case in check.cases():
    if case.label in wanted:
        with check.compile_only(90) as compiled:
            case.call()
        ((name, kernel, _),) = compiled
        rec = check.describe(90, case.label, name, kernel, 0.0)
        print(name, "tt.reshape" in kernel.asm["ttir"], rec.tensor_cores)
"""
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[-2:]
    assert sorted(lines) == [
        "_masked_linear_dx_kernel False wgmma",
        "_masked_linear_kernel False wgmma",
    ], proc.stdout


def test_no_matching_case_is_an_error():
    proc = run(str(SCRIPT), "--only", "no such kernel")
    assert proc.returncode == 2 and "no case matches" in proc.stderr


def test_a_compile_error_is_reported_as_a_failure(tmp_path):
    code = """
import sys
sys.path.insert(0, "scripts")  # the checkout is the working directory
import torch, triton, triton.language as tl
import check_triton_compile as check

@triton.jit
def broken(x, BLOCK: tl.constexpr):
    tl.store(x + tl.arange(0, BLOCK), 1.0)  # BLOCK = 3: not a power of two

check.cases = lambda: [check.Case("broken", lambda: broken[(1,)](torch.empty(4), BLOCK=3))]
(rec,) = check.compile_arch(80)
print(rec.problems())
"""
    (tmp_path / "broken.py").write_text(code)  # Triton reads a kernel's source from its file
    proc = run(str(tmp_path / "broken.py"))
    assert proc.returncode == 0, proc.stderr
    assert "compile error" in proc.stdout


def test_shared_memory_above_the_architecture_limit_is_a_problem():
    check = load_script()
    assert check.Compiled(80, "case", "k", shared=163 * 1024).problems() == []
    (problem,) = check.Compiled(80, "case", "k", shared=164 * 1024).problems()
    assert "sm_80 limit" in problem
    assert check.Compiled(90, "case", "k", shared=200 * 1024).problems() == []


def test_every_launcher_has_cases():
    import ast

    proc = run(
        "-c",
        """
import json, sys
sys.path.insert(0, "scripts")  # the checkout is the working directory
import check_triton_compile as check
print(json.dumps([case.label for case in check.cases()]))
""",
    )
    assert proc.returncode == 0, proc.stderr
    covered = {label.split()[0] for label in json.loads(proc.stdout.splitlines()[-1])}
    launchers = {  # every launcher an op registers: step/ops imports it from step.kernels
        alias.name.removesuffix("_triton")
        for path in (ROOT / "step" / "ops").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("step.kernels.")
        for alias in node.names
        if alias.name.endswith("_triton")
    }
    assert len(launchers) >= 10, launchers
    assert launchers <= covered, launchers - covered

"""Installs work: a built wheel imports step.kernels and finds the CUDA sources from
outside the source tree, and installs no top-level ``kernels`` module."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from step.native.sources import cuda_sources

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_has_kernels_and_sources():
    import step.kernels

    assert Path(step.kernels.__file__).parent.name == "kernels"
    assert cuda_sources(), "no .cu files found through step.csrc"
    assert all(p.is_file() and p.suffix == ".cu" for p in cuda_sources())


def test_checkout_root_does_not_shadow_hugging_face_kernels():
    """From the checkout's root (``python -m pytest``, ``python -c``) the checkout's
    ``kernels/`` folder must not hide Hugging Face's ``kernels`` package, which
    ``transformers`` imports; ``step.kernels`` stays ours."""
    probe = (
        "import kernels, step.kernels, step.kernels.nm_mask as ours, transformers.integrations;"
        "from kernels import get_kernel;"  # Hugging Face's API, absent from ours
        "print(kernels.__file__); print(ours.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    hf_file, ours_file = (Path(line) for line in done.stdout.splitlines())
    assert not hf_file.resolve().is_relative_to(ROOT), hf_file
    assert ours_file.name == "nm_mask.py" and ours_file.parent.name == "kernels"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out), str(ROOT)],
        check=True, cwd=out,
    )  # fmt: skip
    (built,) = out.glob("step_sparsity-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "step/kernels/__init__.py" in names
    assert "step/kernels/sparse24_pack.py" in names
    assert any(n.startswith("step/csrc/") and n.endswith(".cu") for n in names)
    assert "step/csrc/adam_update_cpu.c" in names  # the cpu backend compiles it at first use
    top_level = {n.split("/")[0] for n in names}
    assert "kernels" not in top_level and "csrc" not in top_level and "tests" not in top_level
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "step-sparsity = step.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_wheel_imports_from_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True,
    )  # fmt: skip
    probe = (
        "import step, step.kernels, step.native.sources as s, pathlib, sys;"
        f"root = pathlib.Path({str(target)!r}).resolve();"
        "assert pathlib.Path(step.__file__).resolve().is_relative_to(root), step.__file__;"
        "assert pathlib.Path(step.kernels.__file__).resolve().is_relative_to(root);"
        "srcs = s.cuda_sources(); assert srcs, 'no CUDA sources found';"
        "assert all(p.resolve().is_relative_to(root) for p in srcs), srcs;"
        "import torch; w = torch.randn(4, 8); assert step.nm_mask(w).sum() == 16;"
        "print('ok', len(srcs))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")

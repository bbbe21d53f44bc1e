"""The dispatch layer: automatic choice, forcing, reporting."""

import pytest
import torch

import step
from step.ops import OPS
from step.ops.dispatch import choose, forced_backend, implementations


def test_every_op_has_reference_and_triton():
    for op in OPS:
        assert {"reference", "triton"} <= set(implementations(op)), op


def test_backends_report_reasons():
    report = step.backends("cpu")
    assert list(report) == ["cuda", "triton", "cpu", "reference"]
    assert report["reference"].available
    assert report["cpu"].available and "C kernels built with" in report["cpu"].reason
    assert not report["cuda"].available and "CUDA device" in report["cuda"].reason
    assert report["triton"].available  # the suite runs Triton in its interpreter
    assert "TRITON_INTERPRET" in report["triton"].reason
    assert all(isinstance(s.reason, str) and s.reason for s in report.values())


def test_automatic_choice_on_cpu_never_picks_the_interpreter():
    w = torch.randn(4, 8)
    for op in ("nm_mask", "nm_compress"):
        assert choose(op, w.device, w, 2, 4)[0] == "reference"


def test_forcing_with_the_environment(monkeypatch):
    w = torch.randn(4, 8)
    monkeypatch.setenv("STEP_BACKEND", "triton")
    assert choose("nm_mask", w.device, w, 2, 4)[0] == "triton"
    monkeypatch.setenv("STEP_BACKEND", "nm_mask=triton, nm_compress=reference")
    assert choose("nm_mask", w.device, w, 2, 4)[0] == "triton"
    assert choose("nm_compress", w.device, w, 2, 4)[0] == "reference"
    assert forced_backend("sparse24_linear") is None


def test_context_manager_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("STEP_BACKEND", "triton")
    with step.use_backend(None):
        assert forced_backend("nm_mask") is None
    with step.use_backend("reference"):
        assert forced_backend("nm_mask") == "reference"
    assert forced_backend("nm_mask") == "triton"


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    w = torch.randn(4, 8)
    with step.use_backend("cuda"), pytest.raises(step.BackendError, match="cuda"):
        step.nm_mask(w, 2, 4)
    with (
        step.use_backend("nm_compress=cuda"),
        pytest.raises(step.BackendError, match="no cuda"),
    ):
        step.nm_compress(w, 2, 4)
    monkeypatch.setenv("STEP_BACKEND", "gpu")
    with pytest.raises(step.BackendError, match="unknown backend 'gpu'"):
        step.nm_mask(w, 2, 4)
    with pytest.raises(step.BackendError, match="unknown backend"):
        with step.use_backend("nm_mask=fast"):
            pass
    with pytest.raises(step.BackendError, match="expected"):
        with step.use_backend("=triton"):
            pass


def test_triton_on_cpu_without_the_interpreter_is_explained(monkeypatch):
    from step.ops.dispatch import backend_status

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status = backend_status("triton", "cpu")
    assert not status.available and "TRITON_INTERPRET" in status.reason


@pytest.mark.parametrize(
    ("triton", "numpy", "usable"),
    [("3.6.0", "2.4.6", False), ("3.6.0", "2.3.5", True), ("3.7.0", "2.4.6", True),
     ("3.9.0+gitabc", "2.5.2", True), ("3.6.0rc1", "2.4.0", False)],
)  # fmt: skip
def test_interpreter_with_a_numpy_it_cannot_run_is_explained(monkeypatch, triton, numpy, usable):
    """Triton < 3.7's interpreter fails with numpy >= 2.4 inside every runtime-bound loop:
    the backend says so (and what to install) instead of failing deep in a kernel."""
    from step.ops import availability

    versions = {"triton": triton, "numpy": numpy}
    monkeypatch.setattr(availability.importlib.metadata, "version", versions.__getitem__)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    availability._interpreter_problem.cache_clear()
    try:
        status = availability.backend_status("triton", "cpu")
    finally:
        availability._interpreter_problem.cache_clear()
    assert status.available == usable, status.reason
    if not usable:
        assert f"Triton {triton}'s interpreter cannot run with numpy {numpy}" in status.reason
        assert "triton>=3.7 or numpy<2.4" in status.reason


def test_only_reference_says_when_automatic_choice_has_nothing_else():
    """What a frozen layer asks before calling its op: the CPU has only the reference of
    the linear ops (Triton runs there only when forced), a C kernel for adam_update."""
    from step.ops.dispatch import only_reference

    cpu = torch.device("cpu")
    assert only_reference("nm_linear", cpu) and only_reference("sparse24_linear", cpu)
    assert not only_reference("adam_update", cpu)
    with step.use_backend("nm_linear=reference"):  # forced: the op must run, and decide
        assert not only_reference("nm_linear", cpu) and only_reference("sparse24_linear", cpu)

"""Bad arguments to the model-level API (sparsify, freeze, export, load_sparse,
restore_sparsity, summarize), to STEP_BACKEND and to device arguments: a TypeError or
ValueError naming the argument, the value and the fix, raised before anything changes."""

import pytest
import torch
from test_export import Net, trained
from test_export_safety import Snapshot
from torch import nn

import step
from step.ops.dispatch import check_device, forced_backend

NOT_MODULES = {
    "state_dict": lambda: nn.Linear(4, 4).state_dict(),
    "class": lambda: nn.Linear,
    "str": lambda: "model.safetensors",
    "list of modules": lambda: [nn.Linear(4, 4)],
    "tensor": lambda: torch.zeros(4, 4),
    "None": lambda: None,
}

CALLS = {
    "sparsify": lambda model, path: step.sparsify(model),
    "freeze": lambda model, path: step.freeze(model),
    "export": lambda model, path: step.export(model, path),
    "restore_sparsity": lambda model, path: step.restore_sparsity(model),
    "summarize": lambda model, path: step.summarize(model),
}


@pytest.mark.parametrize("value", list(NOT_MODULES))
@pytest.mark.parametrize("call", list(CALLS))
def test_a_non_module_is_a_type_error(tmp_path, call, value):
    bad = NOT_MODULES[value]()
    with pytest.raises(
        TypeError, match=rf"^model must be a torch\.nn\.Module .*got {type(bad).__name__}"
    ):
        CALLS[call](bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [v for v in NOT_MODULES if v != "None"])
def test_load_sparse_model_must_be_a_module(tmp_path, value):
    step.export(trained(), tmp_path)
    with pytest.raises(TypeError, match=r"^model must be a torch\.nn\.Module"):
        step.load_sparse(tmp_path, model=NOT_MODULES[value]())


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda p: step.export(trained(), 42), TypeError, r"path must be a str or pathlib\.Path"),
        (lambda p: step.export(trained(), p, format=1), TypeError, r"format must be a str"),
        (lambda p: step.export(trained(), p, format="onnx"), ValueError, "format must be one of"),
        (lambda p: step.load_sparse(None, model=Net()), TypeError, r"path must be a str"),
        (lambda p: step.load_sparse(p, model=Net(), device=1.5), TypeError, "device must be a"),
        (
            lambda p: step.load_sparse(p, model=Net(), device="gpu"),
            ValueError,
            r"device 'gpu' is not a device torch knows .* use e\.g\. 'cpu'",
        ),
        (
            lambda p: step.load_sparse(p, model=Net(), semi_structured=1),
            TypeError,
            "semi_structured must be True or False, got int 1",
        ),
    ],
)
def test_export_and_load_arguments(tmp_path, call, error, message):
    target = tmp_path / "x"
    with pytest.raises(error, match=message):
        call(target)
    assert not target.exists()


# ------------------------------------------------------------------------ sparsify


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"include": "0"}, TypeError, r"include must be a list of name patterns, e\.g\. \['0'\]"),
        ({"exclude": "2"}, TypeError, r"exclude must be a list of name patterns"),
        ({"include": [0]}, TypeError, r"include patterns must be strings, got \[0\]"),
        ({"exclude": 3}, TypeError, r"exclude must be a list of name patterns, .* got int 3"),
        ({"exclude": ["fc*"]}, ValueError, r"exclude pattern\(s\) \['fc\*'\] match no .*: 0, 2, 3"),
        ({"include": ["0", "9"]}, ValueError, r"include pattern\(s\) \['9'\] match no"),
        ({"overrides": [("0", (1, 4))]}, TypeError, r"overrides must be a dict"),
        ({"overrides": {"0": 4}}, TypeError, r"overrides\['0'\] must be \(n, m\) or None, got 4"),
        ({"overrides": {"0": (4, 4)}}, ValueError, r"1 <= n < m"),
        ({"overrides": {"9": None}}, ValueError, r"overrides pattern\(s\) \['9'\] match no"),
        ({"n": 2.0}, TypeError, r"n must be an int"),
    ],
)
def test_sparsify_arguments(kwargs, error, message):
    model = mlp()
    before = Snapshot(model)
    with pytest.raises(error, match=message):
        step.sparsify(model, **kwargs)
    before.assert_same(model)


@pytest.mark.parametrize(
    "kwargs,asked",
    [
        ({"n": 1, "m": 4}, "1:4"),  # the case of the issue: it silently stayed 2:4
        ({"n": 2, "m": 8}, "2:8"),
        ({"overrides": {"2": (1, 4)}}, "1:4"),
        ({"overrides": {"2": None}}, "dense"),
        ({"exclude": ["2"]}, "dense"),
        ({"include": ["2"], "n": 1, "m": 2}, "1:2"),
    ],
)
def test_sparsify_never_ignores_an_already_sparse_layer(kwargs, asked):
    model = step.sparsify(mlp(), include=["0", "2"])
    before = Snapshot(model)
    with pytest.raises(ValueError, match=rf"already N:M sparse .*\b2 \(is 2:4, asked {asked}\)"):
        step.sparsify(model, **kwargs)
    before.assert_same(model)
    assert (model[2].sparsity.n, model[2].sparsity.m) == (2, 4)


def test_sparsify_again_with_the_same_pattern_is_harmless():
    model = step.sparsify(mlp(), include=["0"])
    layer = model[0]
    step.sparsify(model, include=["0", "2"])  # converts 2, leaves 0 as it is
    assert model[0] is layer and type(model[2]) is step.nn.SparseLinear
    step.sparsify(model, overrides={"3": (1, 4)}, include=["0", "2", "3"])
    assert model[0] is layer and (model[3].sparsity.n, model[3].sparsity.m) == (1, 4)


def test_exclude_and_include_may_name_already_sparse_layers():
    """A pattern that names only an already sparse layer (with its own pattern) is
    not 'matching nothing'."""
    model = step.sparsify(mlp(), include=["0"])
    step.sparsify(model, include=["0"])
    step.sparsify(model, overrides={"0": (2, 4)}, include=["0", "2"])
    assert type(model[2]) is step.nn.SparseLinear


# ------------------------------------------------------------------------ STEP_BACKEND


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nm_mak=triton", r"unknown op 'nm_mak'; the ops are adam_update, masked_linear, "),
        ("nm_mask=triton,sparse24=reference", r"entry 'sparse24=reference': unknown op"),
        ("NM_MASK=reference", r"unknown op 'NM_MASK'"),
        ("nm_mask=fast", r"unknown backend 'fast'"),
    ],
)
def test_step_backend_is_checked(monkeypatch, spec, message):
    w = torch.randn(4, 8)
    monkeypatch.setenv("STEP_BACKEND", spec)
    with pytest.raises(step.BackendError, match=message):
        step.nm_mask(w, 2, 4)
    with pytest.raises(step.BackendError, match=message):
        with step.use_backend(spec):
            pass
    monkeypatch.setenv("STEP_BACKEND", "nm_mask=reference, nm_compress=triton")
    assert forced_backend("nm_compress") == "triton"


# ------------------------------------------------------------------------ devices


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(TypeError, match=r"--device must be a str or torch\.device .* got int 0"):
        check_device(0, "--device")
    with pytest.raises(ValueError, match=r"device 'tpu' is not a device torch knows"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'cuda' cannot be used: no cuda device is visible"):
            check_device("cuda")
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"device 'cuda:{count}' cannot be used"):
        check_device(f"cuda:{count}")

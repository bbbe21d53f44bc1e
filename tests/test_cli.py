"""The step-sparsity command."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from step.cli import main


def test_info_prints_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "backends on cpu:" in out
    assert "reference  yes" in out


def test_info_json_is_machine_readable(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backends"]["cpu"]["reference"]["available"] is True
    assert info["backends"]["cpu"]["cuda"]["available"] is False


def test_console_script_is_installed():
    exe = shutil.which("step-sparsity")
    if exe is None:
        pytest.fail("the step-sparsity console script is not on PATH: is the package installed?")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("step-sparsity ")


def test_no_command_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "step.cli"], capture_output=True, text=True)
    assert done.returncode == 2 and "COMMAND" in done.stderr


def test_export_command_writes_both_formats_from_a_training_checkpoint(tmp_path, capsys):
    import torch
    import transformers

    import step

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=64,
                                      n_positions=16, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = step.sparsify(transformers.GPT2LMHeadModel(config))
    for layer in model.modules():
        if isinstance(layer, step.nn.SparseConv1D):
            layer.sparsity.set_mode("ste")  # as in STEP's mask-learning phase
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--dtype",
                 "float16"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    row = (
        r"transformer\.h\.0\.mlp\.c_fc\.weight\s+2:4\s+compressed\s+cutlass_2to4\s+32,768\s+18,432"
    )
    assert re.search(row, out)
    assert "compressed export to" in out and "dense export to" in out
    ids = torch.randint(0, 64, (2, 8))
    want = model.half().eval()(ids).logits
    for fmt in ("dense", "compressed"):
        loaded = step.load_sparse(tmp_path / "out" / fmt)
        torch.testing.assert_close(loaded(ids).logits, want, rtol=2e-3, atol=2e-3)


def one_line_error(capsys, argv, command):
    """``main(argv)`` exits with status 1 and one line on stderr, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"step-sparsity {command}: error: ")
    return err


def test_export_command_refuses_bad_input(tmp_path, capsys):
    out = str(tmp_path / "o")
    err = one_line_error(capsys, ["export", str(tmp_path), out, "--format", "onnx"], "export")
    assert "--format takes a comma-separated list of dense, compressed; got 'onnx'" in err
    err = one_line_error(capsys, ["export", str(tmp_path), out], "export")
    assert f"{tmp_path} holds nothing step-sparsity export reads; SRC is a step-sparsity " in err
    assert "train run directory" in err and "Hugging Face save_pretrained directory" in err
    (tmp_path / "config.json").write_text("{")
    err = one_line_error(capsys, ["export", str(tmp_path), out], "export")
    assert "config.json is not valid JSON" in err
    (tmp_path / "config.json").write_text("{}")
    err = one_line_error(capsys, ["export", str(tmp_path), out], "export")
    assert "has no 'step_sparsity' plan" in err
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "sparsity.json").write_text("{}")
    err = one_line_error(capsys, ["export", str(tmp_path), out], "export")
    assert "model.safetensors: cannot read it as safetensors" in err
    assert not (tmp_path / "o").exists()


def test_export_command_writes_only_into_new_or_empty_directories(tmp_path, capsys):
    """Checked before the source is read: nothing is written, nothing is replaced."""
    (tmp_path / "o" / "dense").mkdir(parents=True)
    (tmp_path / "o" / "dense" / "keep").write_text("mine")
    argv = ["export", str(tmp_path / "none"), str(tmp_path / "o")]
    err = one_line_error(capsys, argv, "export")
    assert f"{tmp_path / 'o' / 'dense'} already exists and is not an empty directory" in err
    assert (tmp_path / "o" / "dense" / "keep").read_text() == "mine"
    assert not (tmp_path / "o" / "compressed").exists()


def test_train_on_a_missing_device_is_one_line(tmp_path, capsys):
    """Checked before any work starts: nothing is written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", "--device", "cuda", "--out", str(out)], "train")
    assert "--device 'cuda' cannot be used: no cuda device is visible to PyTorch" in err
    err = one_line_error(capsys, ["train", "--device", "tpu", "--out", str(out)], "train")
    assert "--device 'tpu' is not a device torch knows" in err
    assert not out.exists()
    config = tmp_path / "gpu.toml"
    config.write_text('device = "cuda"\nsteps = 2\n')
    err = one_line_error(capsys, ["train", "--config", str(config), "--out", str(out)], "train")
    assert "device (from --device, --config or the resumed run) 'cuda' cannot be used" in err
    assert not out.exists()


def test_console_script_reports_user_errors_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "step.cli", "export", str(tmp_path / "none"), str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "none: no such file or directory" in done.stderr


def test_bugs_keep_their_traceback(monkeypatch):
    """Only user errors are shortened: a ValueError raised outside step's code, a
    TypeError (the arguments are strings: only a bug makes one) or a KeyError propagate."""
    from step import cli

    def int_of_text(args):
        return int("not a number")

    def type_error(args):
        raise TypeError("bug")

    def key_error(args):
        raise KeyError("bug")

    for func, error in ((int_of_text, ValueError), (type_error, TypeError), (key_error, KeyError)):
        monkeypatch.setattr(cli, "_cmd_info", func)
        with pytest.raises(error):
            main(["info"])

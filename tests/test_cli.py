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


def test_export_command_refuses_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="--format takes dense, compressed"):
        main(["export", str(tmp_path), str(tmp_path / "o"), "--format", "onnx"])
    with pytest.raises(FileNotFoundError, match="neither a step export"):
        main(["export", str(tmp_path), str(tmp_path / "o")])

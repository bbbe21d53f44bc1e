"""The step-sparsity command."""

import json
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

"""``step-sparsity bench`` (``step.bench``), built into a parser as the CLI does."""

import argparse
import datetime
import json

import pytest
import torch

import step.bench
from step.bench import cases

ALL_CASES = ("mask", "compress", "linear", "optimizer")


def bench(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="step-sparsity")
    sub = parser.add_subparsers(dest="command", required=True)
    step.bench.add_parser(sub)
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_quick_cpu_run_prints_every_case_and_writes_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "x.json"
    assert bench("--quick", "--device", "cpu", "--out", str(out)) == 0
    assert torch.get_num_threads() == threads  # --threads 1 is undone afterwards
    text = capsys.readouterr().out
    head, rule, *rows = text.splitlines()[2:]
    assert head.split()[:2] == ["case", "shape"] and "ratio" in head and "baseline ms" in head
    assert set(rule) == {"-", " "}
    for case in ALL_CASES:
        assert any(row.startswith(case) for row in rows), case
    assert "ours took less time" in text and f"wrote {out}" in text

    data = json.loads(out.read_text())
    header = data["header"]
    for key in ("device_name", "torch", "triton", "step", "date", "threads", "reps", "warmup"):
        assert key in header, key
    assert header["device_type"] == "cpu" and header["threads"] == 1 and header["quick"]
    datetime.datetime.fromisoformat(header["date"])
    records = data["records"]
    assert {r["case"] for r in records} == set(ALL_CASES)
    assert len([r for r in records if r["case"] == "linear"]) == 2  # tokens 1 and 16
    for r in records:
        assert r["ours_ms"] > 0 and r["baseline_ms"] > 0 and r["reps"] == header["reps"]
        assert r["ratio"] == pytest.approx(r["baseline_ms"] / r["ours_ms"])
    assert {r["baseline"] for r in records} == {"copy", "nn.Linear", "AdamW(foreach)"}


def test_cases_subset_and_default_out_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench("--quick", "--device", "cpu", "--cases", "compress, mask", "--reps", "2") == 0
    (out,) = tmp_path.glob("bench-cpu-*.json")
    today = datetime.date.today().isoformat()
    assert out.name == f"bench-cpu-quick-{today}.json"  # a smoke test: never a full run's name
    records = json.loads(out.read_text())["records"]
    assert [r["case"] for r in records] == ["mask", "compress"]
    assert all(r["reps"] == 2 and r["gbps"] > 0 for r in records)
    text = capsys.readouterr().out
    assert "optimizer" not in text and f"wrote {out.name}\n" in text
    # the same run again: a new file beside it, and the line says why
    first = out.read_text()
    assert bench("--quick", "--device", "cpu", "--cases", "mask", "--reps", "1") == 0
    second = tmp_path / f"bench-cpu-quick-{today}-2.json"
    assert f"wrote {second.name} ({out.name} already exists)" in capsys.readouterr().out
    assert out.read_text() == first and json.loads(second.read_text())["records"]


def test_default_names_of_quick_and_full_runs_differ():
    date = datetime.date(2026, 11, 24)
    assert step.bench.default_out("cpu", False, date).name == "bench-cpu-2026-11-24.json"
    assert step.bench.default_out("cpu", True, date).name == "bench-cpu-quick-2026-11-24.json"
    assert step.bench.default_out("cuda", True, date).name == "bench-cuda-quick-2026-11-24.json"


def test_an_existing_out_is_refused_before_timing_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "x.json"
    out.write_text("previous")
    argv = ("--quick", "--device", "cpu", "--cases", "mask", "--reps", "1", "--out", str(out))
    with pytest.raises(FileExistsError, match=r"x.json already exists: .*--overwrite"):
        bench(*argv)
    assert out.read_text() == "previous" and "bench:" not in capsys.readouterr().err
    assert bench(*argv, "--overwrite") == 0
    assert json.loads(out.read_text())["records"][0]["case"] == "mask"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_clear_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench("--device", "cuda")
    assert exc.value.code == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["mask,foo", "", "gemm"])
def test_bad_cases_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        bench("--device", "cpu", "--cases", bad)
    assert exc.value.code == 2
    assert "mask,compress,linear,optimizer" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--reps", "0"], ["--warmup", "-1"], ["--threads", "x"]])
def test_bad_counts_are_refused(flag):
    with pytest.raises(SystemExit) as exc:
        bench("--device", "cpu", *flag)
    assert exc.value.code == 2


def test_a_wrong_op_stops_the_run_before_any_timing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cases, "nm_mask", lambda w, n, m: torch.ones_like(w, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="check failed before timing: nm_mask"):
        bench("--quick", "--device", "cpu", "--cases", "mask", "--out", str(tmp_path / "x.json"))
    assert "ratio" not in capsys.readouterr().out and not (tmp_path / "x.json").exists()


@pytest.mark.gpu
def test_quick_cuda_run(tmp_path):
    out = tmp_path / "x.json"
    assert bench("--quick", "--device", "cuda", "--out", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["header"]["device_type"] == "cuda"
    assert {r["case"] for r in data["records"]} == set(ALL_CASES)

"""The runners' ``--quick`` sizes and ``--jsonl`` case-by-case output (what
``scripts/gpu_session`` reads), on CPU: the JSON lines, the summary rows of every
runner (GPU-only ones from fabricated records), and the quick defaults."""

from __future__ import annotations

import json
from pathlib import Path

import _common as common
import bench_inference
import bench_nm_matmul
import bench_optimizer
import bench_sparse24_gemm
import bench_sparsify
import pytest
import torch

LLAMA = [(4096, 4096), (11008, 4096), (4096, 11008)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def timed(ms: float, **fields: object) -> dict:
    return {"median_ms": ms, **fields}


# ---------------------------------------------------------------- _common


def test_case_log_appends_header_then_cases(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.jsonl"
    log = common.CaseLog(path, {"benchmark": "demo", "reps": 3}, planned_cases=2)
    log.case([{"a": 1}], [common.summary_row("c", "ours", 1.0, "base", 2.0)])
    entries = lines(path)
    assert [e["type"] for e in entries] == ["header", "case"]
    assert entries[0] == {
        "benchmark": "demo",
        "type": "header",
        "planned_cases": 2,
        "header": {"benchmark": "demo", "reps": 3},
    }
    assert entries[1]["rows"][0]["ratio"] == 2.0 and entries[1]["records"] == [{"a": 1}]
    common.CaseLog(None, {"benchmark": "demo"}, 1).case([], [])  # no file: nothing written


def test_compare_gives_ratio_or_the_reason() -> None:
    row = common.compare("c", "ours", "base", timed(0.5), timed(1.5))
    assert row["ratio"] == pytest.approx(3.0) and row["ours_note"] == row["baseline_note"] == ""
    row = common.compare("c", "ours", "base", {"skipped": "wrong result: x"}, timed(1.0))
    assert row["ratio"] is None and row["ours_ms"] is None
    assert row["ours_note"] == "wrong result: x"
    assert common.compare("c", "ours", "base", timed(1.0), None)["baseline_note"] == "not run"


# ---------------------------------------------------------------- summary rows per runner


def test_sparse24_gemm_rows() -> None:
    base = {"n": 4096, "k": 4096, "m": 16, "dtype": "float16"}
    records = [
        {**base, "impl": "cusparselt", "skipped": "unavailable: RuntimeError: no"},
        {**base, "impl": "step-cuda", "median_ms": 0.05},
        {**base, "impl": "dense", "median_ms": 0.08},
    ]
    rows = bench_sparse24_gemm.summary_rows(records)
    assert [(r["case"], r["baseline"]) for r in rows] == [
        ("4096x4096 M=16 float16", "cuBLAS dense"),
        ("4096x4096 M=16 float16", "cuSPARSELt"),
    ]
    assert rows[0]["ratio"] == pytest.approx(1.6) and rows[1]["ratio"] is None
    assert rows[1]["baseline_note"].startswith("unavailable")


def test_nm_matmul_rows() -> None:
    base = {"n_out": 11008, "k": 4096, "nm": "1:4", "tokens": 1, "dtype": "float16"}
    impls = {"dense": 0.1, "masked-unfused": 0.4, "masked-fused": 0.2, "nm-compressed": 0.05}
    records = [{**base, "impl": impl, "median_ms": ms} for impl, ms in impls.items()]
    rows = bench_nm_matmul.summary_rows(records)  # 1:4: no masked-mma row
    assert [(r["ours"], r["baseline"], r["ratio"]) for r in rows] == [
        ("masked-fused", "dense", pytest.approx(0.5)),
        ("masked-fused", "masked-unfused", pytest.approx(2.0)),
        ("nm-compressed", "dense", pytest.approx(2.0)),
    ]
    assert rows[0]["case"] == "11008x4096 1:4 T=1 float16"


def test_inference_rows() -> None:
    record = {
        "shape": [4096, 4096],
        "nm": "2:4",
        "tokens": 16,
        "dtype": "float16",
        "layout": "sparse24",
        "auto_backend": "cuda",
        "sparse_ms": 0.02,
        "dense_ms": 0.03,
        "reference_ms": 0.3,
    }
    rows = bench_inference.summary_rows([record])
    assert [(r["ours"], r["ratio"]) for r in rows] == [
        ("frozen sparse24 (cuda)", pytest.approx(1.5)),
        ("compressed via reference", pytest.approx(0.1)),
    ]


def test_optimizer_and_sparsify_rows() -> None:
    records = [
        {"case": "copy", "dtype": "float32", "backend": "torch", "median_ms": 1.0},
        {"case": "adamw", "dtype": "float32", "backend": "fused", "params": 2e8, "median_ms": 2.0},
        {
            "case": "step_precondition",
            "dtype": "float32",
            "backend": "auto",
            "resolved_backend": "triton",
            "median_ms": 1.6,
        },
        {"case": "step", "dtype": "float32", "backend": "cuda", "skipped": "no cuda impl"},
    ]
    rows = bench_optimizer.summary_rows(records)
    assert [(r["case"], r["ours"], r["baseline"]) for r in rows] == [
        ("200M params float32", "step_precondition (auto (triton))", "AdamW(fused)"),
        ("200M params float32", "STEP (cuda)", "AdamW(fused)"),
    ]
    assert rows[0]["ratio"] == pytest.approx(1.25) and rows[1]["ours_note"] == "no cuda impl"
    shape = {"rows": 4096, "k": 11008, "dtype": "float16"}
    records = [
        {**shape, "op": "copy", "backend": "torch", "median_ms": 0.1},
        {**shape, "op": "nm_mask", "backend": "triton", "median_ms": 0.08},
    ]
    (row,) = bench_sparsify.summary_rows(records)
    assert (row["case"], row["ours"], row["ratio"]) == (
        "4096x11008 float16",
        "nm_mask (triton)",
        pytest.approx(1.25),
    )


# ---------------------------------------------------------------- --quick and --jsonl


def test_quick_sizes_are_llama_projections() -> None:
    args, _ = bench_sparsify.parse_args(["--device", "cpu", "--quick"])
    assert args.shapes == LLAMA and args.dtypes == ["float16"]
    assert (args.reps, args.warmup) == (20, 3)
    args, _ = bench_inference.parse_args(["--device", "cpu", "--quick"])
    assert args.shapes == LLAMA and args.tokens == [1, 16, 4096]
    args, _ = bench_optimizer.parse_args(["--device", "cpu", "--quick", "--reps", "5"])
    assert (args.width, args.blocks, args.reps, args.warmup) == (4096, 1, 5, 3)
    args, _ = bench_sparsify.parse_args(["--device", "cpu"])  # without --quick: unchanged
    assert (args.reps, args.warmup, args.dtypes) == (20, 3, ["float16", "bfloat16"])


def test_sparse24_gemm_quick_needs_a_gpu(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as exc:
        bench_sparse24_gemm.parse_args(["--quick"])
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_a_cpu_run_appends_every_case(tmp_path: Path) -> None:
    jsonl = tmp_path / "sparsify.jsonl"
    argv = [
        "--device",
        "cpu",
        "--shapes",
        "64x64,32x128",
        "--dtypes",
        "float16",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
        "--jsonl",
        str(jsonl),
    ]
    assert bench_sparsify.main(argv) == 0
    entries = lines(jsonl)
    assert [e["type"] for e in entries] == ["header", "case", "case"]
    assert entries[0]["planned_cases"] == 2 and entries[0]["header"]["benchmark"] == "sparsify"
    assert [e["rows"][0]["case"] for e in entries[1:]] == ["64x64 float16", "32x128 float16"]
    assert all(r["ratio"] > 0 for e in entries[1:] for r in e["rows"])

"""CPU tests of ``bench_nm_matmul.py``, the GPU benchmark of the Triton N:M matmuls.

The timing itself needs a GPU; what is tested here is everything around it: the FLOP and
byte counts (against numbers worked out by hand), the case list (``--quick``, ``--ratios``
parsing, explicit options winning over ``--quick``), the Markdown tables and the target
checks rendered from fake result rows, the output checks (wrong values, masks, NaN), the
refusal without CUDA (exit status 2) and ``--help``, and one case checked and "timed" end
to end on CPU with the Triton interpreter (its times mean nothing; it proves the checks
accept correct kernels and the records carry every field).

Run::

    python -m pytest -q benchmarks/test_bench_nm_matmul.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bench_nm_matmul as bench
import pytest
import torch

BENCH = Path(bench.__file__).resolve()


# ---------------------------------------------------------------- counts


def test_flops_and_bytes_by_hand() -> None:
    """4096x4096 fp16 (e = 2): worked out by hand, not with the functions under test."""
    assert bench.matmul_flops(4096, 4096, 4096) == 137_438_953_472  # 2 * 4096**3
    assert bench.matmul_flops(1, 11008, 4096) == 90_177_536
    # dense, 1 token: x 8,192 + W 33,554,432 + y 8,192
    assert bench.matmul_bytes("dense", 1, 4096, 4096, 2, 4) == 33_570_816
    # masked: dense plus the bool mask written once (16,777,216)
    assert bench.matmul_bytes("masked-fused", 1, 4096, 4096, 2, 4) == 50_348_032
    assert bench.matmul_bytes("masked-unfused", 1, 4096, 4096, 2, 4) == 50_348_032
    # 2:4: values 4096*2048*2 = 16,777,216; positions 2048 kept * 2 bits = 128 words
    # per row, 4096*128*4 = 2,097,152; plus x and y 16,384
    assert bench.matmul_bytes("nm-compressed", 1, 4096, 4096, 2, 4) == 18_890_752
    # 1:4: values 8,388,608; 1024 kept * 2 bits = 64 words -> 1,048,576
    assert bench.matmul_bytes("nm-compressed", 1, 4096, 4096, 1, 4) == 9_453_568
    # 1:8: values 4,194,304; 512 kept * 3 bits = 48 words -> 786,432
    assert bench.matmul_bytes("nm-compressed", 1, 4096, 4096, 1, 8) == 4_997_120
    # 16 tokens, 1:4: x 131,072 + values and positions 9,437,184 + y 131,072
    assert bench.matmul_bytes("nm-compressed", 16, 4096, 4096, 1, 4) == 9_699_328
    # bf16 has the same element size; fp32 (e = 4) doubles values, x and y only
    assert bench.matmul_bytes("nm-compressed", 1, 4096, 4096, 2, 4, 4) == 35_684_352
    assert bench.bytes_limit_speedup(1, 4096, 4096, 2, 4) == pytest.approx(33_570_816 / 18_890_752)
    assert bench.bytes_limit_speedup(1, 4096, 4096, 1, 8) == pytest.approx(6.7180, abs=1e-4)


def test_bytes_for_an_odd_position_width() -> None:
    """2:32 uses 5-bit positions: 11008 columns -> 344 groups -> 688 kept -> 3440 bits
    -> 108 words (107.5 rounded up)."""
    assert bench.weight_bytes("nm", 4096, 11008, 2, 32) == 4096 * 688 * 2 + 4096 * 108 * 4
    with pytest.raises(ValueError, match="unknown op"):
        bench.weight_bytes("copy", 1, 4, 2, 4)


# ---------------------------------------------------------------- case list


def filled(argv: list[str]):
    """The benchmark's arguments after :func:`bench.fill_cases` (no CUDA check)."""
    parser = bench.build_parser()
    args = parser.parse_args(argv)
    bench.fill_cases(parser, args)
    return args


def test_full_and_quick_case_lists() -> None:
    full = bench.cases(filled([]))
    assert len(full) == 3 * 3 * 5
    assert full[0] == {"n_out": 4096, "k": 4096, "n": 2, "m": 4, "tokens": 1}
    assert {(c["n_out"], c["k"]) for c in full} == {(4096, 4096), (11008, 4096), (4096, 11008)}
    assert {(c["n"], c["m"]) for c in full} == {(2, 4), (1, 4), (1, 8)}
    assert sorted({c["tokens"] for c in full}) == [1, 4, 16, 256, 4096]
    quick = bench.cases(filled(["--quick"]))
    assert [(c["n"], c["m"], c["tokens"]) for c in quick[:6]] == [
        (2, 4, 1), (2, 4, 16), (2, 4, 4096), (1, 4, 1), (1, 4, 16), (1, 4, 4096),
    ]  # fmt: skip
    assert len(quick) == 3 * 2 * 3  # every shape
    assert [(c["n_out"], c["k"]) for c in quick[::6]] == [(4096, 4096), (11008, 4096),
                                                          (4096, 11008)]  # fmt: skip
    # an option given explicitly wins over --quick's subset
    mixed = bench.cases(filled(["--quick", "--ratios", "1:8", "--tokens", "4"]))
    assert [(c["n"], c["m"], c["tokens"]) for c in mixed] == [(1, 8, 4)] * 3  # 3 shapes


def test_ratio_parsing_and_refusals(capsys) -> None:
    assert bench.parse_ratios("2:4, 1:8 ,1:4") == [(2, 4), (1, 8), (1, 4)]
    assert filled(["--ratios", "2:32"]).ratios == [(2, 32)]
    for bad in ("4:2", "2-4", "0:4", "1:64"):
        with pytest.raises(SystemExit) as exc:
            filled(["--ratios", bad])
        assert exc.value.code == 2
        assert "--ratios" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # K = 4100 does not split into groups of 8
        filled(["--shapes", "4096x4100", "--ratios", "1:8"])
    assert "not a multiple of m=8" in capsys.readouterr().err
    args = filled(["--dtype", "bfloat16", "--peak-gbps", "4800"])
    assert (args.dtype, args.peak_gbps) == ("bfloat16", 4800.0)


# ---------------------------------------------------------------- report


HEAD = {
    "benchmark": "nm_matmul", "device_name": "GPU X", "date": "2026-01-01T00:00:00+00:00",
    "commit": "abc", "dirty": False, "torch": "t", "triton": "tr", "python": "p",
    "step": "s", "timer": "events", "reps": 3, "warmup": 1, "dtype": "float16",
    "peak_gbps": 3350.0,
}  # fmt: skip


def fake_records() -> list[dict]:
    """One decode case (every implementation measured) and one 4096-token case with the
    fused kernel reported wrong."""
    d = {"n_out": 4096, "k": 4096, "nm": "1:4", "tokens": 1, "dtype": "float16"}
    p = {**d, "tokens": 4096}
    return [
        {**d, "impl": "dense", "median_ms": 0.012, "tflops": 0.0028, "gbps": 2797.6,
         "speedup_vs_dense": 1.0},
        {**d, "impl": "masked-unfused", "median_ms": 0.05, "tflops": 0.0007, "gbps": 1000.0,
         "speedup_vs_dense": 0.24},
        {**d, "impl": "masked-fused", "median_ms": 0.02, "tflops": 0.0017, "gbps": 2517.4,
         "speedup_vs_dense": 0.6, "speedup_vs_unfused": 2.5},
        {**d, "impl": "nm-compressed", "median_ms": 0.004, "tflops": 0.0084, "gbps": 2363.4,
         "speedup_vs_dense": 3.0, "bytes_limit_speedup": 3.551, "fraction_of_peak_bw": 0.706},
        {**p, "impl": "dense", "median_ms": 0.2, "tflops": 687.2, "gbps": 500.0,
         "speedup_vs_dense": 1.0},
        {**p, "impl": "masked-unfused", "median_ms": 0.3, "tflops": 458.1, "gbps": 400.0,
         "speedup_vs_dense": 0.667},
        {**p, "impl": "masked-fused", "skipped": "wrong result: error 1 > 2 x cuBLAS error 0"},
        {**p, "impl": "nm-compressed", "median_ms": 0.25, "tflops": 549.8, "gbps": 100.0,
         "speedup_vs_dense": 0.8, "bytes_limit_speedup": 1.2},
    ]  # fmt: skip


def test_mma_table_only_with_measured_mma_rows() -> None:
    assert "sparse tensor cores" not in bench.markdown(HEAD, fake_records())
    d = {"n_out": 4096, "k": 4096, "nm": "2:4", "tokens": 4096, "dtype": "float16"}
    rows = [
        {**d, "impl": "dense", "median_ms": 0.2, "speedup_vs_dense": 1.0},
        {**d, "impl": "masked-fused", "median_ms": 0.22, "speedup_vs_dense": 0.91},
        {**d, "impl": "masked-mma", "median_ms": 0.16, "tflops": 859.0,
         "speedup_vs_dense": 1.25, "speedup_vs_fused": 1.375},
    ]  # fmt: skip
    lines = bench.markdown(HEAD, rows).splitlines()
    assert "| 4096x4096 | 4096 | 0.2 | 0.22 | 0.16 | 859 | 1.25 | 1.38 |" in lines


def test_markdown_tables_from_fake_rows() -> None:
    lines = bench.markdown(HEAD, fake_records()).splitlines()
    assert lines[0] == "# nm_matmul benchmark: GPU X"
    expected = [
        # masked table: dense ms and TFLOP/s, unfused ms, fused ms, TFLOP/s, GB/s, ratios
        "| 4096x4096 | 1:4 | 1 | 0.012 | 0.0028 | 0.05 | 0.02 | 0.0017 | 2517 | 0.6 | 2.5 |",
        "| 4096x4096 | 1:4 | 4096 | 0.2 | 687.2 | 0.3 | wrong result | wrong result | wrong result"
        " | wrong result | wrong result |",
        # compressed table: the decode row has the bytes-limit fraction in percent
        "| 4096x4096 | 1:4 | 1 | 0.012 | 2798 | 0.004 | 0.0084 | 2363 | 3 | 3.55 | 70.6 |",
        "| 4096x4096 | 1:4 | 4096 | 0.2 | 500 | 0.25 | 549.8 | 100 | 0.8 | 1.2 | - |",
        # targets: measured value, goal, met
        "| compressed decode >= 85% of the bytes limit | 4096x4096 1:4 T=1 | 0.706 | 0.85 | no |",
        "| compressed 1:4 >= 3.0x cuBLAS at 1-16 tokens | 4096x4096 1:4 T=1 | 3 | 3 | yes |",
        "- 4096x4096 1:4 T=4096 masked-fused: wrong result: error 1 > 2 x cuBLAS error 0",
        "- bytes limit: peak bandwidth 3350 GB/s (--peak-gbps)",
    ]
    for line in expected:
        assert line in lines
    # no target row for the fused kernel: it was not measured at 4096 tokens
    assert not [line for line in lines if line.startswith("| fused masked matmul")]
    assert any("1:4 >= 3.0x" in line for line in lines)


def test_target_checks_only_for_measured_cases() -> None:
    checks = bench.target_checks(fake_records())
    assert [(c["target"].split(" ")[0], c["case"], c["met"]) for c in checks] == [
        ("compressed", "4096x4096 1:4 T=1", False),  # 70.6% of the bytes limit < 85%
        ("compressed", "4096x4096 1:4 T=1", True),  # 3.0x >= 3x
    ]
    # with the fused kernel measured at 4096 tokens both of its targets are checked
    records = fake_records()
    records[6] = {**records[6], "median_ms": 0.21, "speedup_vs_dense": 0.2 / 0.21,
                  "speedup_vs_unfused": 0.3 / 0.21}  # fmt: skip
    del records[6]["skipped"]
    fused = [c for c in bench.target_checks(records) if c["target"].startswith("fused")]
    assert [(c["goal"], c["met"]) for c in fused] == [(pytest.approx(1 / 1.1), True), (1.0, True)]


def test_check_flags_wrong_results_and_masks() -> None:
    from step.ops.nm_mask import nm_mask_ref

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    x = torch.randn(3, 16, generator=gen)
    mask = nm_mask_ref(w, 1, 4)
    w_pruned = torch.where(mask, w, 0)
    y = x @ w_pruned.T
    ref64 = x.double() @ w_pruned.double().T
    assert bench.check(y, mask, y, ref64, mask) is None
    assert bench.check(y, ~mask, y, ref64, mask).startswith("wrong mask")
    assert bench.check(y + 1, None, y, ref64, mask).startswith("wrong result: error")
    assert bench.check(y * torch.nan, None, y, ref64, mask).startswith("wrong result")
    assert bench.check(y.half(), None, y, ref64, mask).startswith("wrong result: shape")


# ---------------------------------------------------------------- command line


def test_refuses_without_cuda_and_has_help() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
    help_proc = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--quick", "--ratios", "--tokens", "--dtype", "--reps", "--warmup", "--out"):
        assert option in help_proc.stdout
    assert "--peak-gbps" in help_proc.stdout and "3350" in help_proc.stdout


# ---------------------------------------------------------------- one case on CPU

SELF_TEST = """
import argparse, json, torch, step
import bench_nm_matmul as bench
from step.ops.nm_mask import nm_mask_ref
args = argparse.Namespace(reps=1, warmup=0, peak_gbps=100.0)
gen = torch.Generator().manual_seed(0)
w = torch.randn(32, 64, generator=gen).to(torch.float16)
out = []
for n, m in ((2, 4), (1, 8)):
    mask = nm_mask_ref(w, n, m)
    c = step.nm_compress(w, n, m)
    for t in (1, 20):
        x = torch.randn(t, 64, generator=gen).to(torch.float16)
        case = {"n_out": 32, "k": 64, "n": n, "m": m, "tokens": t}
        out += bench.measure_case(case, w, torch.where(mask, w, 0), mask, c, x, args, None,
                                  allow_interpreter=True)
print(json.dumps(out))
"""


def test_one_case_checked_and_timed_on_cpu_with_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SELF_TEST],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    # every kernel passed the checks; the mma.sp path (2:4 only) needs a GPU
    skipped = [r for r in records if "skipped" in r]
    assert [(r["impl"], r["nm"]) for r in skipped] == [("masked-mma", "2:4")] * 2
    assert all("CUDA" in r["skipped"] for r in skipped)
    records = [r for r in records if "skipped" not in r]
    assert len(records) == 2 * 2 * 4
    for r in records:
        n, m = (int(v) for v in r["nm"].split(":"))
        assert r["bytes"] == bench.matmul_bytes(r["impl"], r["tokens"], 32, 64, n, m)
        assert r["flops"] == 2 * r["tokens"] * 32 * 64 and r["reps"] == 1
        assert r["median_ms"] > 0 and "speedup_vs_dense" in r
    compressed = [r for r in records if r["impl"] == "nm-compressed"]
    assert [("fraction_of_peak_bw" in r) for r in compressed] == [True, False, True, False]
    assert all(r["backend"] == "triton" for r in compressed)
    assert all("speedup_vs_unfused" in r for r in records if r["impl"] == "masked-fused")

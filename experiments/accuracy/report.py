"""``docs/results.md`` from the accuracy study's result files (``study.py``).

One section per scale found in ``results/`` (``cpu``, ``long``, ``gpu``, in that order,
then any other). For every task and N:M of a scale: the headline metric per recipe (mean
+- std over seeds), its ratio to dense, the gap to dense paired by seed (same
initialisation and batches), the switch step as a fraction of training, and wall time; a
figure of the validation loss over training per recipe (mean over seeds) with its gap to
dense paired by seed; a figure of the mask flip rate per recipe (where the runs recorded
it). For every task a figure of Z_t with the switch points of both AutoSwitch criteria. A
scale whose planned runs (``study.plan``) are not all there is reported as partial: what
exists, and what is missing. The conclusions are written by hand in ``conclusions.md``
(beside this file) and appended, so that regenerating the tables never overwrites them.

    python experiments/accuracy/report.py                 # every scale -> docs/results.md
    python experiments/accuracy/report.py --scale gpu --out docs/results-gpu.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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
    "sste": "S-STE",
    "step": "STEP, plateau AutoSwitch (default)",
    "step-paper": "STEP, paper AutoSwitch",
}
RECIPE_COLORS = {
    "dense": "black",
    "asp": "tab:orange",
    "srste": "tab:green",
    "sste": "tab:purple",
    "step": "tab:blue",
    "step-paper": "tab:red",
}
VARIANT_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
TASK_TITLES = {
    "fashion-mnist": "Fashion-MNIST, small ResNet (CIFAR stand-in)",
    "shakespeare": "Shakespeare, character GPT (GPT-2 stand-in)",
    "minilm-sentiment": "MiniLM-L6 fine-tuned on tweet sentiment (BERT/GLUE stand-in)",
}
SCALE_ORDER = ("cpu", "long", "gpu", "smoke", "long-smoke")
REPORTED = ("cpu", "long", "gpu")
"""The scales of the study proper (not its smokes): the page says which have no results."""
SCALE_TITLES = {
    "cpu": "CPU scale: short runs sized for 2 CPU cores",
    "long": "Long scale: 10x the CPU scale's steps, for Adam's variance to matter",
    "gpu": "GPU scale: one GPU, about 10x the CPU scale's tokens",
    "smoke": "Smoke of the CPU scale: a few steps, to check the pipeline",
    "long-smoke": "Smoke of the long scale: a few steps, to check the pipeline",
}
SMOKE_OF = {"smoke": "cpu", "long-smoke": "long"}
"""The table of the task files that a smoke scale runs (``study.load_study``)."""
HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False}


def _study():
    """``study.py`` beside this file (the plan of a scale), imported once."""
    name = "accuracy_study"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def load(results: Path) -> tuple[list[dict], list[dict]]:
    """``(runs, pilots)`` of one results folder (pilots are the ``pilot-*`` files)."""
    files = sorted(results.glob("*.json"))
    if not files:
        raise SystemExit(f"no result files in {results}; run experiments/accuracy/study.py")
    records = [json.loads(f.read_text()) for f in files]
    pilots = [r for f, r in zip(files, records, strict=True) if f.name.startswith("pilot-")]
    runs = [r for f, r in zip(files, records, strict=True) if not f.name.startswith("pilot-")]
    return runs, pilots


def scales_found(results: Path) -> list[str]:
    """The scales with result files under ``results``, in :data:`SCALE_ORDER` first."""
    found = {d.name for d in results.iterdir() if d.is_dir() and any(d.glob("*.json"))}
    return [s for s in SCALE_ORDER if s in found] + sorted(found - set(SCALE_ORDER))


def planned(scale: str) -> dict[str, list] | None:
    """The runs (``study.Run``) that ``study.py`` plans at ``scale``, per task (every task
    file with the scale's table); None for a scale the study does not know."""
    study = _study()
    if scale not in study.SCALES:
        return None
    runs = {}
    for path in sorted(study.CONFIGS.glob("*.toml")):
        try:
            task_study = study.load_study(path, scale)
        except SystemExit as error:
            if "has no [" in str(error):
                continue  # the task is not run at this scale
            raise
        runs[task_study.task] = study.plan(task_study)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(metric: str, value: float, spread: float | None = None) -> str:
    """Accuracy in percent, perplexity as is; ``spread`` is a standard deviation."""
    scale, digits = (100.0, 2) if metric == "accuracy" else (1.0, 3)
    text = f"{value * scale:.{digits}f}"
    return text if spread is None else f"{text} +- {spread * scale:.{digits}f}"


def fmt_values(metric: str, values: list[float]) -> str:
    """Mean +- std over seeds; a single seed's value alone (it has no spread)."""
    if len(values) == 1:
        return fmt(metric, values[0])
    return fmt(metric, *mean_std(values))


def by_recipe(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r["recipe"]].append(r)
    return groups


def recipe_order(recipes) -> list[str]:
    """The study's recipes in their order, then variants (from ``[variants]``) by name."""
    return [r for r in RECIPE_NAMES if r in recipes] + sorted(set(recipes) - set(RECIPE_NAMES))


def recipe_label(recipe: str, rows: list[dict]) -> str:
    """A recipe's name, a variant's label from its run files (else its name)."""
    return RECIPE_NAMES.get(recipe) or next((r["label"] for r in rows if r.get("label")), recipe)


def recipe_colors(recipes) -> dict[str, str]:
    variants = [r for r in recipe_order(recipes) if r not in RECIPE_COLORS]
    colors = {v: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, v in enumerate(variants)}
    return {**RECIPE_COLORS, **colors}


def nm_order(nms) -> list[str]:
    return sorted(nms, key=lambda s: [int(v) for v in s.split(":")])


def task_table(task: str, nm: str, runs: list[dict], dense: dict[int, dict]) -> list[str]:
    """The Markdown table of one task at one N:M (dense rows from ``dense`` by seed)."""
    metric = runs[0]["metric"]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    groups = by_recipe(runs)
    groups["dense"] = list(dense.values())
    head = (f"| recipe | {metric} (mean +- std) | ratio to dense | gap to dense, paired "
            "| switch step (fraction) | seeds | wall time per run |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|"]
    dense_mean = mean_std([r["final"][metric] for r in dense.values()])[0] if dense else None
    for recipe in recipe_order(groups):
        rows = sorted(groups.get(recipe, []), key=lambda r: r["seed"])
        if not rows:
            continue
        values = [r["final"][metric] for r in rows]
        mean = statistics.fmean(values)
        ratio = gap = "-"
        if recipe != "dense" and dense_mean:
            ratio = f"{mean / dense_mean:.4f}"
            # positive = worse than dense: lost accuracy, or added perplexity
            diffs = [sign * (dense[r["seed"]]["final"][metric] - r["final"][metric])
                     for r in rows if r["seed"] in dense]  # fmt: skip
            if diffs:
                gap = fmt_values(metric, diffs)
        switches = [r["switch_step"] / r["steps"] for r in rows if r["switch_step"]]
        switch = "-"
        if switches:
            steps = ", ".join(str(r["switch_step"]) for r in rows)
            switch = f"{steps} ({statistics.fmean(switches):.2f})"
        seconds = statistics.fmean(r["seconds"] for r in rows)
        lines.append(f"| {recipe_label(recipe, rows)} | {fmt_values(metric, values)} | {ratio} "
                     f"| {gap} | {switch} | {len(rows)} | {seconds:.0f} s |")  # fmt: skip
    return lines


_PLT = []


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (said once) without matplotlib."""
    if not _PLT:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("figures skipped: matplotlib is not installed")
            plt = None
        _PLT.append(plt)
    return _PLT[0]


def zt_figure(task: str, runs: list[dict], threshold: float | None, path: Path,
              title: str | None = None) -> bool:  # fmt: skip
    """Z_t per seed (its window mean, the paper threshold) and the plateau statistic, with
    the switch steps of both criteria; False when matplotlib or the runs are missing."""
    step_runs = {(r["seed"], r["recipe"]): r for r in runs if r["recipe"] in ("step", "step-paper")}
    seeds = sorted({seed for seed, _ in step_runs})
    plt = pyplot() if seeds else None
    if plt is None:
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
    if any(recipe == "step-paper" for _, recipe in step_runs):
        caption = "switch steps, plateau (solid) and paper (dashed)"
    else:
        caption = "switch steps of the plateau criterion"
    top.set(ylabel="Z_t = mean |v_t - v_(t-1)|", title=f"{title or task}: {caption}")
    bottom.set(xlabel="step", ylabel="plateau statistic")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _mean_by_step(rows_per_seed: dict[int, dict[int, float]]) -> tuple[list, list, list, list]:
    """``{seed: {step: value}}`` -> steps, mean, min and max over the seeds at each step."""
    steps = sorted({s for rows in rows_per_seed.values() for s in rows})
    at = [[rows[s] for rows in rows_per_seed.values() if s in rows] for s in steps]
    return steps, [statistics.fmean(v) for v in at], [min(v) for v in at], [max(v) for v in at]


def eval_steps(runs: list[dict]) -> list[int]:
    return sorted({row["step"] for r in runs for row in r["eval"] if "val_loss" in row})


def validation_figure(runs: list[dict], path: Path, title: str) -> bool:
    """The validation loss over training per recipe (mean over seeds; dense's spread over
    seeds shaded) and, below, its gap to the dense run of the same seed at the same step;
    dotted lines at ASP's prune step and STEP's mean switch step. ``runs`` holds the dense
    runs."""
    plt = pyplot()
    if plt is None:
        return False
    groups = by_recipe(runs)
    colors = recipe_colors(groups)
    dense = {r["seed"]: {e["step"]: e["val_loss"] for e in r["eval"] if "val_loss" in e}
             for r in groups.get("dense", [])}  # fmt: skip
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})  # fmt: skip
    for recipe in recipe_order(groups):
        rows, color = groups[recipe], colors[recipe]
        label = recipe_label(recipe, rows)
        curves = {r["seed"]: {e["step"]: e["val_loss"] for e in r["eval"] if "val_loss" in e}
                  for r in rows}  # fmt: skip
        steps, mean, low, high = _mean_by_step(curves)
        top.plot(steps, mean, color=color, marker="o", ms=3, label=f"{label} ({len(rows)})")
        if recipe == "dense" and len(rows) > 1:  # the seed noise, without hiding the rest
            top.fill_between(steps, low, high, color=color, alpha=0.12, lw=0)
        if recipe != "dense" and dense:
            gaps = {seed: {s: v - dense[seed][s] for s, v in curve.items() if s in dense[seed]}
                    for seed, curve in curves.items() if seed in dense}  # fmt: skip
            if any(gaps.values()):
                steps, mean, _, _ = _mean_by_step(gaps)
                bottom.plot(steps, mean, color=color, marker="o", ms=3)
        mark = None
        if recipe == "asp":
            mark = rows[0]["config"].get("prune_at", 0) * rows[0]["steps"]
        elif any(r["switch_step"] for r in rows):
            mark = statistics.fmean(r["switch_step"] for r in rows if r["switch_step"])
        if mark:
            for ax in (top, bottom):
                ax.axvline(mark, color=color, ls=":", lw=1)
    bottom.axhline(0.0, color="black", lw=0.8)
    top.set(ylabel="validation loss", title=title)
    bottom.set(xlabel="step", ylabel="gap to dense, same seed")
    top.legend(fontsize=8, title="recipe (seeds)", title_fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _two_five(value: float, _) -> str:
    """The label of a minor tick of a log axis: its value at 2x and 5x a power of ten."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def flip_figure(runs: list[dict], path: Path, title: str) -> bool:
    """The mask flip rate per recipe (mean over seeds at each logged step, in percent, log
    scale); False when no run here learned a mask (or matplotlib is missing)."""
    groups = {recipe: rows for recipe, rows in by_recipe(runs).items()
              if any(r.get("flip_rate") for r in rows)}  # fmt: skip
    plt = pyplot() if groups else None
    if plt is None:
        return False
    from matplotlib.ticker import FuncFormatter

    colors = recipe_colors(groups)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for recipe in recipe_order(groups):
        rows = [r for r in groups[recipe] if r.get("flip_rate")]
        curves = {r["seed"]: {step: rate for step, rate in r["flip_rate"]} for r in rows}
        steps, mean, _, _ = _mean_by_step(curves)
        points = [(s, 100 * m) for s, m in zip(steps, mean, strict=True) if m > 0]
        if points:
            label = f"{recipe_label(recipe, rows)} ({len(rows)})"
            ax.plot(*zip(*points, strict=True), color=colors[recipe], lw=1, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    low, high = ax.get_ylim()
    if high / low < 10:  # within about a decade: label every tick
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    elif high / low < 1000:  # label 2x and 5x between powers of ten
        ax.yaxis.set_minor_formatter(FuncFormatter(_two_five))
    ax.set(xlabel="step", ylabel="mask flip rate (% of entries per update)", title=title)
    ax.legend(fontsize=8, title="recipe (seeds)", title_fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def environment_line(runs: list[dict]) -> str:
    env = runs[0]["environment"]
    dates = sorted(r["environment"]["date"] for r in runs)
    return (f"{env['device']}, {env['torch_threads']} thread per run; step-sparsity "
            f"{env['step-sparsity']}, torch {env['torch']}, Python {env['python']}; "
            f"{dates[0][:10]} to {dates[-1][:10]}")  # fmt: skip


def _seeds(seeds) -> str:
    seeds = sorted(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def progress(runs: list[dict], plan: dict[str, list] | None) -> tuple[int, int, list[str]]:
    """``(done, planned, missing)``: how many planned runs have a result, of how many, and
    the missing ones in words (per task, N:M and recipe, with their seeds)."""
    if plan is None:
        return len(runs), len(runs), []
    done = {r["run"] for r in runs}
    started = {r["task"] for r in runs}
    total = sum(len(task_runs) for task_runs in plan.values())
    present, words = 0, []
    for task, task_runs in plan.items():
        todo = [run for run in task_runs if run.name not in done]
        present += len(task_runs) - len(todo)
        if todo and task not in started:
            words.append(f"{task}: not started ({len(task_runs)} runs)")
            continue
        seeds: dict[tuple[str, str], list[int]] = defaultdict(list)
        for run in todo:
            seeds[run.nm, run.recipe].append(run.seed)
        for nm in nm_order({nm for nm, _ in seeds}):
            parts = [f"{recipe} ({_seeds(s)})" for (n, recipe), s in seeds.items() if n == nm]
            words.append(f"{task} {nm}: {', '.join(parts)}")
    return present, total, words


def scale_section(scale: str, runs: list[dict], pilots: list[dict], plan, img_dir: Path,
                  out: Path) -> list[str]:  # fmt: skip
    """The Markdown section of one scale: its tables, figures and, if partial, what is
    missing."""
    done, total, missing = progress(runs, plan)
    title = SCALE_TITLES.get(scale, f"Scale `{scale}`")
    status = f" (partial: {done} of {total} planned runs)" if missing else ""
    table = f"`[{SMOKE_OF.get(scale, scale)}]` table"
    if scale in SMOKE_OF:
        table += " with the smoke's few steps and one seed"
    lines = [f"## {title}{status}", "",
             f"`python experiments/accuracy/study.py --scale {scale}`: the {table} of each "
             f"task's configuration, results in `experiments/accuracy/results/{scale}/`. "
             f"Machine: {environment_line(runs)}.", ""]  # fmt: skip
    if missing:
        lines += [f"**Partial results:** {done} of the {total} planned runs of this scale "
                  "are done; the tables and figures below show those that are (the *seeds* "
                  "column counts them). Missing: " + "; ".join(missing) + ".", ""]  # fmt: skip
    flips_recorded = any("flip_rate" in r for r in runs)
    if not flips_recorded:
        lines += ["The mask flip rate was not recorded at this scale: its result files "
                  "predate the flip-rate log (rerun the study to record it).", ""]  # fmt: skip
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_task[r["task"]].append(r)

    def image(name: str) -> Path:
        return img_dir / f"accuracy_{scale}_{name}.png"  # scales never share a figure

    def link(path: Path, alt: str) -> list[str]:
        rel = Path("img") / path.name if img_dir.parent == out.parent else path
        return [f"![{alt}]({rel.as_posix()})", ""]

    for task in [t for t in TASK_TITLES if t in by_task] + sorted(set(by_task) - set(TASK_TITLES)):
        task_runs = by_task[task]
        cfg = task_runs[0]["config"]
        lines += [f"### {TASK_TITLES.get(task, task)}", "",
                  f"{cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
                  f"AutoSwitch t_min {cfg['t_min']:g}, t_max {cfg['t_max']:g} (fractions "
                  f"of the run), window {cfg['window']} steps.", ""]  # fmt: skip
        dense = {r["seed"]: r for r in task_runs if r["recipe"] == "dense"}
        for nm in nm_order({r["nm"] for r in task_runs if r["recipe"] != "dense"}):
            sparse = [r for r in task_runs if r["nm"] == nm and r["recipe"] != "dense"]
            lines += [f"#### {nm}", "", *task_table(task, nm, sparse, dense), ""]
            curves = sparse + list(dense.values())
            where, slug = f"{task} {nm}, {scale} scale", f"{task}_{nm.replace(':', 'x')}"
            steps = eval_steps(curves)
            path = image(f"val_{slug}")
            if len(steps) > 1:
                if validation_figure(curves, path, f"{where}: validation loss, mean over seeds"):
                    lines += link(path, f"Validation loss over training, {where}")
            elif steps:
                lines += [f"Validation loss was evaluated at step {steps[0]} only (the end "
                          "of training): no curve.", ""]  # fmt: skip
            path = image(f"flips_{slug}")
            if flips_recorded and flip_figure(curves, path, f"{where}: mask flip rate, mean "
                                              "over seeds"):  # fmt: skip
                lines += link(path, f"Mask flip rate, {where}")
        pilot = next((p for p in pilots if p["task"] == task), None)
        paper = [r for r in task_runs if r["recipe"] == "step-paper"]
        threshold = paper[0]["config"]["threshold"] if paper else None  # from the pilot
        if pilot is not None and threshold is not None:
            lines += [f"Paper threshold: {threshold:.3g} (mean Z_t over the last "
                      f"{pilot['config']['window']} steps of the pilot, seed {pilot['seed']}, "
                      f"plateau switch at step {pilot['switch_step']}).", ""]  # fmt: skip
        path = image(f"zt_{task}")
        if zt_figure(task, task_runs, threshold, path, f"{task} ({scale})"):
            lines += link(path, f"Z_t and the switch steps, {task}, {scale} scale")
    total = sum(r["seconds"] for r in runs) + sum(p["seconds"] for p in pilots)
    counted = f"{len(runs)} runs"
    if pilots:
        counted += f" and {len(pilots)} pilot{'s' if len(pilots) > 1 else ''}"
    lines += [f"Training time of all {counted} of this scale: {total / 60:.0f} min (sum "
              "over runs; they ran in parallel).", ""]  # fmt: skip
    return lines


def render(scales: dict[str, tuple[list[dict], list[dict]]], img_dir: Path, out: Path,
           conclusions: str | None, absent: tuple[str, ...] = ()) -> str:  # fmt: skip
    """The whole Markdown page: ``scales`` maps a scale to its ``(runs, pilots)``;
    ``absent`` names scales without results, said to be to come."""
    plans = {scale: planned(scale) for scale in scales}
    overview = []
    for scale, (runs, _) in scales.items():
        done, total, missing = progress(runs, plans[scale])
        state = f"partial, {done} of {total} planned runs" if missing else f"{done} runs"
        overview.append(f"`{scale}` ({state})")
    overview = ", ".join(overview)
    to_come = [f"`{s}` ({sum(map(len, plan.values()))} runs planned)"
               for s in absent if (plan := planned(s))]  # fmt: skip
    if to_come:
        overview += f". No results yet: {', '.join(to_come)}"
    lines = [
        "# Results: the accuracy study",
        "",
        "Generated by `experiments/accuracy/report.py` from the result files in "
        "`experiments/accuracy/results/<scale>/` (one JSON per run: configuration, versions, "
        "seed, curves, Z_t history). Do not edit the tables by hand: rerun the study "
        "(`python experiments/accuracy/study.py --scale <scale>`) and the report. One "
        f"section per scale: {overview}.",
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
        "Figures per task and N:M: the validation loss of the model as it trains (mean over "
        "seeds, shaded: dense from its lowest to its highest seed; dotted: ASP's prune step and "
        "each STEP recipe's mean switch step) over its gap to the dense run of the same "
        "seed, which "
        "shows when the recipes separate; and the mask flip rate (the fraction of mask "
        "entries that change from one mask update to the next, mean over each log interval "
        "and over seeds; see [optim.md](optim.md#the-mask-flip-rate)) of the recipes that "
        "learn masks: dense has no mask and ASP's is fixed.",
        "",
    ]
    for scale, (runs, pilots) in scales.items():
        lines += scale_section(scale, runs, pilots, plans[scale], img_dir, out)
    missing = "No conclusions written yet (`experiments/accuracy/conclusions.md`)."
    lines += ["## Conclusions", "", conclusions.strip() if conclusions else missing, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--scale", help="only this scale (a folder of --results); "
                        "default: every scale found there")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--img", type=Path, default=None, help="default: img/ beside --out")
    parser.add_argument("--conclusions", type=Path, default=HERE / "conclusions.md")
    args = parser.parse_args(argv)
    if args.scale:
        scales = [args.scale]
    elif args.results.is_dir():
        scales = scales_found(args.results)
    else:
        scales = []
    if not scales:
        raise SystemExit(f"no result files under {args.results}; run "
                         "experiments/accuracy/study.py")  # fmt: skip
    loaded = {scale: load(args.results / scale) for scale in scales}
    img_dir = args.img or args.out.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    conclusions = args.conclusions.read_text() if args.conclusions.is_file() else None
    absent = () if args.scale else tuple(s for s in REPORTED if s not in loaded)
    text = render(loaded, img_dir, args.out, conclusions, absent)
    args.out.write_text(text)
    counts = ", ".join(f"{scale} {len(runs)}" for scale, (runs, _) in loaded.items())
    print(f"wrote {args.out} (runs: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The accuracy study: dense, ASP, SR-STE, S-STE and STEP (both AutoSwitch criteria)
under AdamW.

Every run is one ``step-sparsity train`` run (``step.train.train``) of a task in
``configs/`` at one scale (the ``[cpu]``, ``[gpu]`` or ``[long]`` table of the task's
file), one recipe, one N:M and one seed. A scale's table may list its own ``recipes``,
``nm``, ``seeds`` and ``[<scale>.variants.<name>]``, replacing the file's for that scale.
All recipes of a task share the model initialisation and the batches of each seed
(tasks draw both from the seed), the budget and the hyperparameters. Recipes:

``dense``       AdamW, no masks (one run per seed, the baseline of every N:M)
``asp``         dense AdamW, one-shot magnitude prune at half the run, masked fine-tuning
``srste``       SR-STE from step 1 (masked STE forward, SR-STE decay, v keeps updating)
``step``        STEP with the default scale-free ``plateau`` AutoSwitch
``step-paper``  STEP with the ``paper`` criterion (mean of Z_t below a threshold)
``sste``        S-STE: soft-threshold forward, fixed per-tensor scale, plain AdamW

A task file may add ``[variants.<name>]`` tables: a base ``recipe``, a ``label`` and
settings that differ (e.g. ``srste_decay``), run at the task's first N:M for every seed
unless the variant names its ``nm`` and ``seeds``.

The ``paper`` criterion's threshold is in the units of Z_t, so it is calibrated once per
task and scale on a held-out seed (``PILOT_SEED``): a ``step`` run whose mean Z_t over the
last window at its plateau switch becomes the threshold. The two criteria thus agree on
the pilot, and the study shows how each behaves on the seeds it was not tuned on. The
precondition phase is dense training, so Z_t (and the threshold) does not depend on N:M.

One JSON per run (config, versions, seed, metrics, curves, Z_t history) goes to
``results/<scale>/``; runs whose file exists are skipped, so an interrupted study
resumes. Run directories (checkpoints, exports) go to ``--work`` and are deleted after
their results are read unless ``--keep-runs``. ``report.py`` turns the results into
``docs/results.md``.

    python experiments/accuracy/study.py                  # CPU scale, ~1 h on 2 cores
    python experiments/accuracy/study.py --scale gpu      # one GPU
    python experiments/accuracy/study.py --scale long --tasks shakespeare   # ~2 h, 2 cores
    python experiments/accuracy/study.py --smoke --tasks shakespeare --results /tmp/r
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import multiprocessing
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
RECIPES = ("dense", "asp", "srste", "step", "step-paper", "sste")
VARIANT_BASES = ("asp", "srste", "step", "sste")
SCALES = ("cpu", "gpu", "long", "smoke", "long-smoke")
"""``smoke``: the ``cpu`` table with :data:`SMOKE`; ``long-smoke``: the ``long`` one."""
PILOT_SEED = 1000
LONGEST_FIRST = ("minilm-sentiment", "shakespeare", "fashion-mnist")
"""Tasks by the time of one run: starting the long runs first keeps the workers busy."""
SMOKE = {"steps": 6, "eval_every": 3, "log_every": 1}
"""The CI smoke scales: a scale's settings with these overrides, one seed, the first N:M
(variants at theirs). Settings given as fractions of the run (``t_max``) still apply."""
LISTS = ("recipes", "nm", "seeds", "variants")
"""What a scale's table may give to replace the file's top-level lists."""


@dataclass(frozen=True)
class TaskStudy:
    """One task's file in ``configs/``: what to run and the settings of one scale."""

    task: str
    recipes: tuple[str, ...]
    nms: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any]  # TrainConfig fields of the chosen scale
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def variant_runs(self, name: str) -> tuple[str, tuple[int, ...]]:
        """The N:M and seeds variant ``name`` runs at: its own, else the first N:M and
        the study's seeds."""
        variant = self.variants[name]
        return variant.get("nm", self.nms[0]), tuple(variant.get("seeds", self.seeds))


VARIANT_KEYS = ("recipe", "label", "nm", "seeds")
"""A variant's keys that are not ``TrainConfig`` settings."""


@dataclass(frozen=True)
class Run:
    task: str
    recipe: str  # one of RECIPES
    nm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.nm.replace(':', 'x')}-{self.recipe}-seed{self.seed}"


def load_study(path: Path, scale: str) -> TaskStudy:
    """Read ``configs/<task>.toml`` at ``scale`` (one of :data:`SCALES`)."""
    data = tomllib.loads(path.read_text())
    smoke = scale in ("smoke", "long-smoke")
    section = {"smoke": "cpu", "long-smoke": "long"}.get(scale, scale)
    if section not in data:
        raise SystemExit(f"{path} has no [{section}] table")
    table = dict(data[section])
    lists = {key: table.pop(key, data.get(key, {} if key == "variants" else None)) for key in LISTS}
    unknown = set(lists["recipes"]) - set(RECIPES)
    if unknown:
        raise SystemExit(f"{path}: unknown recipes {sorted(unknown)}; known: {RECIPES}")
    settings, variants = table, lists["variants"]
    for name, variant in variants.items():
        if name in RECIPES or variant.get("recipe") not in VARIANT_BASES:
            raise SystemExit(f"{path}: variant {name!r} needs a new name and a base recipe "
                             f"from {VARIANT_BASES}")  # fmt: skip
    nms, seeds = tuple(lists["nm"]), tuple(lists["seeds"])
    if smoke:
        settings.update(SMOKE)
        nms, seeds = nms[:1], seeds[:1]
        variants = {name: {**v, "seeds": seeds} for name, v in variants.items()}
    return TaskStudy(data["task"], tuple(lists["recipes"]), nms, seeds, settings, variants)


def plan(study: TaskStudy) -> list[Run]:
    """The runs of one task: dense once per seed, every sparse recipe per N:M and seed,
    each variant at its N:M and seeds."""
    runs = []
    for seed in study.seeds:
        for i, nm in enumerate(study.nms):
            for recipe in study.recipes:
                if recipe != "dense" or i == 0:
                    runs.append(Run(study.task, recipe, nm, seed))
    for name in study.variants:
        nm, seeds = study.variant_runs(name)
        runs += [Run(study.task, name, nm, seed) for seed in seeds]
    return runs


def train_config(study: TaskStudy, run: Run, threshold: float | None):
    """The validated, resolved ``TrainConfig`` of ``run``."""
    from step.train.config import build

    values = {**study.settings, "task": run.task, "nm": run.nm, "seed": run.seed}
    values["recipe"] = "step" if run.recipe == "step-paper" else run.recipe
    variant = {k: v for k, v in study.variants.get(run.recipe, {}).items()
               if k not in VARIANT_KEYS}  # fmt: skip
    values["recipe"] = study.variants.get(run.recipe, {}).get("recipe", values["recipe"])
    values.update(variant)
    if run.recipe == "step-paper":
        values.update(criterion="paper", threshold=threshold)
    return build({}, values).resolved()


def environment(device: str) -> dict[str, Any]:
    import torch

    from step.environment import device_name, versions

    return {**versions(), "device": device_name(torch.device(device)),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}  # fmt: skip


def execute(study: TaskStudy, run: Run, threshold: float | None, work: Path, keep: bool):
    """Train ``run`` and return its result record (the JSON written per run)."""
    import torch

    from step.train.loop import train

    torch.set_num_threads(1)  # one run per core: small models scale badly across threads
    cfg = train_config(study, run, threshold)
    run_dir = work / run.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run interrupted before its result: start it again
    result = train(cfg, run_dir, quiet=True)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    switch = json.loads((run_dir / "autoswitch.json").read_text())
    record = {
        "run": run.name, "task": run.task, "recipe": run.recipe, "nm": run.nm,
        "label": study.variants.get(run.recipe, {}).get("label"),
        "seed": run.seed, "config": cfg.to_dict(), "environment": environment(cfg.device),
        "metric": summary["metric"], "final": result.final, "steps": cfg.steps,
        "switch_step": result.switch_step, "seconds": result.seconds,
        "sparsity": summary["sparsity"], "sparse_layers": summary["sparse_layers"],
        "eval": [r for r in rows if "val_loss" in r],
        "train_loss": [[r["step"], r["loss"]] for r in rows if "loss" in r],
        "autoswitch": [[h["step"], h["z"], h["v"], h["statistic"]] for h in switch["history"]],
        "flip_rate": [[r["step"], r["flip_rate"]] for r in rows
                      if r.get("flip_rate") is not None],
    }  # fmt: skip
    if not keep:
        shutil.rmtree(run_dir)
    return record


def paper_threshold(pilot: dict[str, Any]) -> float:
    """Mean Z_t over the last window of the pilot's precondition phase (at its switch)."""
    window = pilot["config"]["window"]
    z = [z for _, z, _, _ in pilot["autoswitch"]][-window:]
    if not z:
        raise SystemExit(f"pilot run {pilot['run']} logged no AutoSwitch samples")
    return sum(z) / len(z)


def _job(study: TaskStudy, run: Run, threshold, work: Path, keep: bool, out: Path) -> dict:
    record = execute(study, run, threshold, work, keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)  # a result file is complete or absent
    return record


def _run_all(jobs: list[tuple], workers: int, label: str) -> list[dict]:
    """Run ``(study, run, threshold, work, keep, out)`` jobs on ``workers`` processes."""
    from tqdm.auto import tqdm

    records = []
    if workers == 1:  # in this process (no pickling: also works when imported by a test)
        for job in tqdm(jobs, desc=label, unit="run"):
            records.append(_job(*job))
        return records
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_job, *job): job[1] for job in jobs}
        bar = tqdm(total=len(futures), desc=label, unit="run")
        for future in cf.as_completed(futures):
            record = future.result()
            value = record["final"][record["metric"]]
            bar.write(f"{record['run']}: {record['metric']} {value:.4g}, "
                      f"switch {record['switch_step']}, {record['seconds']:.0f} s")  # fmt: skip
            bar.update()
            records.append(record)
        bar.close()
    return records


def run_study(tasks: list[str], scale: str, results: Path, work: Path, workers: int,
              keep: bool = False, recipes: list[str] | None = None) -> Path:  # fmt: skip
    """Run every missing run of ``tasks`` at ``scale`` (only ``recipes``' runs, variants
    by name, if given); returns the results folder."""
    out_dir = results / scale
    studies = [load_study(CONFIGS / f"{task}.toml", scale) for task in tasks]

    def pending(study, runs, threshold=None, prefix=""):
        for run in runs:
            out = out_dir / f"{prefix}{run.name}.json"
            if recipes is not None and run.recipe not in recipes:
                continue
            if not out.is_file():
                paper = run.recipe == "step-paper"
                yield (study, run, threshold if paper else None, work, keep, out)

    def pilot_run(study):
        return Run(study.task, "step", study.nms[0], PILOT_SEED)

    calibrated = [s for s in studies if "step-paper" in s.recipes]
    pilots = [job for s in calibrated for job in pending(s, [pilot_run(s)], prefix="pilot-")]
    _run_all(pilots, workers, "pilots")
    jobs = []
    for study in studies:
        threshold = None
        if study in calibrated:
            pilot = json.loads((out_dir / f"pilot-{pilot_run(study).name}.json").read_text())
            threshold = paper_threshold(pilot)
        jobs += pending(study, plan(study), threshold)
    jobs.sort(key=lambda j: LONGEST_FIRST.index(j[0].task) if j[0].task in LONGEST_FIRST else 0)
    _run_all(jobs, workers, f"study ({scale})")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    all_tasks = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="scale",
                        help="a few steps, one seed: checks the pipeline (CI)")  # fmt: skip
    parser.add_argument("--recipes", help="comma-separated: only these recipes' (and "
                        "variants') runs, e.g. to add a recipe to finished results")  # fmt: skip
    parser.add_argument("--tasks", default=",".join(all_tasks),
                        help=f"comma-separated, from {', '.join(all_tasks)}")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("runs/accuracy"),
                        help="where run directories are written while a run trains")  # fmt: skip
    parser.add_argument("--keep-runs", action="store_true", help="keep run directories")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(all_tasks)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {', '.join(all_tasks)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    began = time.perf_counter()
    recipes = [r for r in args.recipes.split(",") if r] if args.recipes else None
    out = run_study(tasks, args.scale, args.results, args.work, args.jobs, args.keep_runs,
                    recipes)  # fmt: skip
    print(f"results in {out} ({time.perf_counter() - began:.0f} s); "
          f"make the report: python {HERE / 'report.py'} --results {args.results}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

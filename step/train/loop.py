"""One training run: a task's model, sparsified, trained with a recipe, evaluated, saved."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from .. import nn as step_nn
from ..optim import AutoSwitch
from ..optim.recipes import make
from ..tasks import make_task
from . import checkpoint
from .config import TrainConfig
from .report import finish_run
from .result import RunResult


def _fraction(value: float, steps: int) -> int:
    return max(1, round(value * steps)) if value < 1 else int(value)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """The run's recipe over ``model``. Every recipe takes lr and weight_decay; "dense" and
    "sste" (S-STE: its scales are fitted from the model's weights here) nothing else."""
    kwargs: dict[str, Any] = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.recipe == "step":
        autoswitch = AutoSwitch(
            t_min=_fraction(cfg.t_min, cfg.steps), t_max=_fraction(cfg.t_max, cfg.steps),
            window=cfg.window, criterion=cfg.criterion, threshold=cfg.threshold)  # fmt: skip
        kwargs.update(srste_decay=cfg.srste_decay, variance_floor=cfg.variance_floor,
                      autoswitch=autoswitch)  # fmt: skip
    elif cfg.recipe == "srste":
        kwargs.update(srste_decay=cfg.srste_decay)
    elif cfg.recipe == "asp":
        kwargs.update(prune_at=_fraction(cfg.prune_at, cfg.steps))
    return make(cfg.recipe, model.parameters(), **kwargs)


def make_schedule(cfg: TrainConfig, opt) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, round(cfg.warmup * cfg.steps))

    def factor(t: int) -> float:  # t counts finished steps
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, cfg.steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _flip_state(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``FlipRate`` state. Checkpoints written before the last masks
    moved into it kept them beside it, keyed by parameter name."""
    flips = state.get("flips", {})  # absent: saved before flip rates
    if "pending" in flips:
        return flips
    legacy = state.get("last_masks", {})
    masks = {k.removesuffix(".weight"): v for k, v in legacy.get("masks", {}).items()}
    current = [k.removesuffix(".weight") for k in legacy.get("current", ())]
    return {"pending": flips, "last_masks": masks, "current": current}


def _state(model, opt, sched, flips, t: int) -> dict[str, Any]:
    state = {"step": t, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "schedule": sched.state_dict(), "rng": torch.get_rng_state(),
             "flips": flips.state_dict()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def load_trained_state(state: dict[str, Any], model, opt, where: str, fix: str = "") -> None:
    """Load a checkpoint's model and optimizer state into a run's fresh objects (the
    optimizer's state sets the layers' modes: phase, ASP masks). A state that does not
    fit the run's configuration (an edited ``config.json``, a copied checkpoint) is a
    :class:`~.checkpoint.CheckpointError`: ``where``, the cause, then ``fix``."""
    try:
        model.load_state_dict(state["model"])  # RuntimeError: missing keys, other shapes
        opt.load_state_dict(state["optimizer"])  # ValueError: another recipe or model
    except (RuntimeError, ValueError, TypeError) as e:  # TypeError: a state value's kind
        raise checkpoint.CheckpointError(f"{where}: {e}{fix}") from None


def _restore(state: dict[str, Any], model, opt, sched, flips, where: Path) -> int:
    """Load a checkpoint's ``state`` into the run's fresh objects; the step it was taken
    at."""
    load_trained_state(state, model, opt, f"{where} does not fit the run configured in its "
                       "config.json", ". Resume it with the configuration it was saved with, "
                       "or start a new run")  # fmt: skip
    sched.load_state_dict(state["schedule"])
    flips.load_state_dict(_flip_state(state))
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def _last_sample(opt):
    """The AutoSwitch record of this step, if the recipe has one."""
    autoswitch = getattr(opt, "autoswitch", None)
    return autoswitch.history[-1] if autoswitch is not None and autoswitch.history else None


PHASE_NEWS = {
    ("precondition", "mask_learning"): "AutoSwitch: step {t}: v frozen, masks learned from now on",
    ("dense", "pruned"): "ASP: step {t}: weights pruned to their N:M magnitude masks, fixed "
    "from now on",
}
"""What the run says when the recipe's phase changes (``opt.phase`` before -> after)."""


def _phase(opt, recipe: str) -> str:
    return getattr(opt, "phase", "dense" if recipe == "dense" else "masked")


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def _truncate_metrics(path: Path, after: int) -> None:
    """Drop rows past ``after`` (a resumed run writes them again, identically), and a
    last row torn by a kill in mid-write (it has no newline); rewritten atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    kept = [line for line in lines if json.loads(line)["step"] <= after]
    checkpoint.write_durably(path, "".join(kept).encode())


def _append_line(log: TextIO, line: str) -> None:
    """Append one metrics row (``line`` ends with a newline)."""
    log.write(line)


def _begin(cfg: TrainConfig, run_dir: Path, resume: bool, model, opt, sched, flips) -> int:
    """Set up ``run_dir`` for a new run, or restore its last committed checkpoint; the
    step training continues after. A run stopped before its first checkpoint resumes
    from step 0, saying so in one line."""
    if not resume:
        checkpoint.make_directory(run_dir)
        text = json.dumps(cfg.to_dict(), indent=1) + "\n"
        checkpoint.write_durably(run_dir / "config.json", text.encode())
        return 0
    start = 0
    if checkpoint.exists(run_dir / "checkpoint"):
        where = run_dir / "checkpoint"
        start = _restore(checkpoint.load(where), model, opt, sched, flips, where)
    else:
        print(f"{run_dir}: no committed checkpoint (the run stopped before its first one): "
              "starting it again from step 0")  # fmt: skip
    _truncate_metrics(run_dir / "metrics.jsonl", start)
    return start


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> RunResult:
    """Train ``cfg`` (resolved) into ``run_dir``; ``resume`` continues its last committed
    checkpoint (or starts again from step 0 if it has none)."""
    device = torch.device(cfg.device)
    task = make_task(cfg.task, cfg.seed, cfg.batch_size, device)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    step_nn.sparsify(model, n=cfg.n, m=cfg.m, exclude=task.dense_layers)
    model.to(device)
    opt = make_optimizer(cfg, model)
    sched = make_schedule(cfg, opt)
    metrics = run_dir / "metrics.jsonl"
    flips = step_nn.FlipRate(model)
    start = _begin(cfg, run_dir, resume, model, opt, sched, flips)
    began = time.perf_counter()
    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps,
               desc=f"{cfg.task} {cfg.recipe} {cfg.nm}", disable=quiet, unit="step")  # fmt: skip
    say = (lambda text: None) if quiet else bar.write  # tqdm.write prints even when disabled
    with metrics.open("a") as log:
        tick, items = time.perf_counter(), 0
        for t in bar:
            model.train()
            phase_before = _phase(opt, cfg.recipe)
            loss = task.loss(model, task.train_batch(t))
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            items += task.items_per_batch()
            phase = _phase(opt, cfg.recipe)
            if (phase_before, phase) in PHASE_NEWS:
                say(PHASE_NEWS[phase_before, phase].format(t=t))
            if t % cfg.log_every == 0 or t == cfg.steps:
                rate = items / (time.perf_counter() - tick)
                record = _last_sample(opt) if phase == "precondition" else None
                flipped = flips.read()
                row = {"step": t, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                       "phase": phase, f"{task.items}_per_s": rate,
                       "statistic": record.statistic if record else None,
                       "flip_rate": flipped.overall,
                       "flip_rate_layers": flipped.layers}  # fmt: skip
                _append_line(log, json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.3f}", phase=phase,
                                stat=f"{row['statistic']:.3f}" if row["statistic"] else "-",
                                flips=_percent(flipped.overall),
                                **{f"{task.items}/s": f"{rate:,.0f}"})  # fmt: skip
                tick, items = time.perf_counter(), 0
            if t % cfg.eval_every == 0 or t == cfg.steps:
                model.eval()
                row = {"step": t, **task.evaluate(model)}
                _append_line(log, json.dumps(row) + "\n")
                log.flush()
                os.fsync(log.fileno())  # the rows are durable before the checkpoint commits
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step")
                say(f"step {t}: {shown}")
                checkpoint.save(_state(model, opt, sched, flips, t), run_dir / "checkpoint")
    bar.close()
    return finish_run(cfg, run_dir, task, model, opt, time.perf_counter() - began)

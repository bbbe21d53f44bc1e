"""The end of a run: the shipped model's metrics, exports checked for N:M, plots, summary."""

from __future__ import annotations

import json
from pathlib import Path

from .. import nn as step_nn
from ..export import export, verify_export
from .config import TrainConfig
from .result import RunResult


def _mark_switch(ax, switch_step: int | None) -> None:
    if switch_step:
        ax.axvline(switch_step, color="gray", ls="--", label=f"switch (step {switch_step})")


def _plot_flip_rate(ax, rows: list[dict], switch_step: int | None) -> None:
    """The logged flip rates (mean per mask update over each log interval), in percent."""
    rates = [(r["step"], 100 * r["flip_rate"]) for r in rows if r.get("flip_rate") is not None]
    if rates:
        ax.plot(*zip(*rates, strict=True), label="mask flip rate")
    _mark_switch(ax, switch_step)
    ax.set_ylabel("flip rate (%)")
    ax.legend()


def _plot_autoswitch(
    path: Path, title: str, history: list[dict], autoswitch, switch_step, rows
) -> None:
    """Z_t, the statistic against what it is compared with (threshold; t_min and t_max
    bound the switch), and the flip rate, over one step axis."""
    import matplotlib.pyplot as plt

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    steps = [h["step"] for h in history]
    top.semilogy(steps, [h["z"] for h in history], label="Z_t = mean|v_t - v_(t-1)|")
    top.set_ylabel("Z_t")
    stats = [(h["step"], h["statistic"]) for h in history if h["statistic"] is not None]
    if stats:
        label = f"AutoSwitch statistic ({autoswitch.criterion})"
        middle.plot(*zip(*stats, strict=True), label=label)
    rule = ">=" if autoswitch.criterion == "plateau" else "<"
    middle.axhline(autoswitch.threshold, color="tab:red", ls=":",
                   label=f"switch when statistic {rule} {autoswitch.threshold:g}")  # fmt: skip
    middle.axvspan(0, autoswitch.t_min, color="0.9", label=f"before t_min ({autoswitch.t_min})")
    if autoswitch.t_max is not None:
        middle.axvline(autoswitch.t_max, color="tab:red", lw=0.8,
                       label=f"t_max ({autoswitch.t_max}): switch at the latest")  # fmt: skip
    middle.set_ylabel("statistic")
    for ax in (top, middle):
        _mark_switch(ax, switch_step)
        ax.legend(fontsize="small")
    _plot_flip_rate(bottom, rows, switch_step)
    bottom.set_xlabel("step")
    top.set_title(f"{title}: AutoSwitch and mask flips")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _plots(run_dir: Path, opt, history: list[dict], switch_step: int | None) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'step-sparsity[examples]')")
        return []
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    _mark_switch(ax, switch_step)
    ax.set(xlabel="step", ylabel="loss", title=f"{run_dir.name}: loss")
    ax.legend()
    fig.savefig(run_dir / "loss.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    files = ["loss.png"]
    if history:
        _plot_autoswitch(run_dir / "autoswitch.png", run_dir.name, history, opt.autoswitch,
                         switch_step, train)  # fmt: skip
        files.append("autoswitch.png")
    elif any(r.get("flip_rate") is not None for r in train):
        fig, ax = plt.subplots(figsize=(7, 3))
        _plot_flip_rate(ax, train, switch_step)
        ax.set(xlabel="step", title=f"{run_dir.name}: mask flip rate")
        fig.savefig(run_dir / "flip_rate.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append("flip_rate.png")
    return files


def finish_run(cfg: TrainConfig, run_dir: Path, task, model, opt, seconds: float) -> RunResult:
    autoswitch = getattr(opt, "autoswitch", None)
    history = [vars(r) for r in autoswitch.history] if autoswitch is not None else []
    switch_step = getattr(opt, "switch_step", None)
    (run_dir / "autoswitch.json").write_text(json.dumps(
        {"switch_step": switch_step, "history": history}) + "\n")  # fmt: skip
    exports: dict = {}
    if cfg.recipe != "dense":
        step_nn.freeze(model)  # what ships: exact N:M, eval on the compressed path
        for fmt in ("dense", "compressed"):
            report = export(model, run_dir / "export" / fmt, format=fmt)
            exports[fmt] = {"bytes": report.tensor_bytes, "dense_bytes": report.dense_bytes,
                            "sparse_weights": report.sparse_layers}  # fmt: skip
        # both exports read back and checked as load_sparse checks them (N:M, codes, sums)
        exports["nm_verified"] = verify_export(run_dir / "export" / "dense")
        verify_export(run_dir / "export" / "compressed")
    model.eval()
    final = task.evaluate(model)
    summary_obj = step_nn.summarize(model)
    plots = _plots(run_dir, opt, history, switch_step)
    summary = {
        "task": cfg.task, "recipe": cfg.recipe, "nm": cfg.nm, "seed": cfg.seed,
        "steps": cfg.steps, "seconds": seconds, "switch_step": switch_step,
        "final": final, "metric": task.metric, "exports": exports, "plots": plots,
        # the dense baseline's layers are sparse layers in dense mode: nothing is pruned
        "sparse_layers": len(summary_obj.layers) if exports else 0,
        "sparsity": summary_obj.sparsity if exports else 0.0,
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return RunResult(run_dir, cfg.recipe, final, switch_step, cfg.steps, seconds, exports)

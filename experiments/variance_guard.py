"""Does STEP's variance guard change results where v* is healthy? The main job
(Shakespeare, 2:4, the task's defaults) with the guard (``variance_floor`` 1e-2, the
default) and without it (0: the spec's update), per seed; also the fraction of sparse
elements below their floor at the switch. One JSON line per run to stdout.

    python experiments/variance_guard.py --seeds 0 1 \
        > experiments/results/variance_guard_shakespeare.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from step.optim.step_recipe import STEP
from step.train.config import build
from step.train.loop import train


def _count_below_floor(fraction: float) -> dict[str, float]:
    """Wrap ``STEP.switch_now`` to record the fraction of sparse elements whose v* lies
    below ``fraction`` times their tensor's mean v* (the guard's floor) at the switch."""
    seen: dict[str, float] = {}
    switch_now = STEP.switch_now

    def recording(self: STEP) -> None:
        switch_now(self)
        below = total = 0
        for p in self.sparse_params():
            v = self.state[p]["exp_avg_sq"]
            below += int((v < fraction * v.mean()).sum())
            total += v.numel()
        seen["fraction_below_floor"] = below / total

    STEP.switch_now = recording
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--floors", type=float, nargs="+", default=[1e-2, 0.0])
    args = parser.parse_args()
    seen = _count_below_floor(1e-2)
    for seed in args.seeds:
        for floor in args.floors:
            cfg = build({}, {"recipe": "step", "seed": seed, "variance_floor": floor}).resolved()
            with tempfile.TemporaryDirectory() as work:
                result = train(cfg, Path(work) / "run", quiet=True)
            print(json.dumps({"variance_floor": floor, "seed": seed, "final": result.final,
                              "switch_step": result.switch_step, **seen}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

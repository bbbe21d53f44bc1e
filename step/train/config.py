"""The configuration of a training run: defaults, a TOML/YAML file, flags; validated
before any work starts."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..optim.autoswitch import CRITERIA
from ..optim.recipes import RECIPES
from ..optim.step_recipe import VARIANCE_FLOOR
from ..tasks import TASKS, task_class


class ConfigError(ValueError):
    """An invalid configuration value (the message names it and says what is allowed)."""


@dataclass
class TrainConfig:
    task: str = "shakespeare"
    recipe: str = "step"  # one of RECIPES: step, srste, asp, dense, sste
    nm: str = "2:4"
    steps: int | None = None  # the task's default
    batch_size: int | None = None  # the task's default
    lr: float | None = None  # the task's default
    weight_decay: float = 0.0
    srste_decay: float = 2e-4  # recipes "step" and "srste" (S-STE has no decay term)
    variance_floor: float = VARIANCE_FLOOR  # STEP's guard of its frozen v (0: off)
    criterion: str = "plateau"  # AutoSwitch criterion for recipe "step"
    threshold: float | None = None  # AutoSwitch threshold ("paper" needs one)
    t_min: float = 0.1  # fraction of steps (< 1) or a step count
    t_max: float = 0.5
    window: int | None = None  # default: max(5, steps // 20)
    prune_at: float = 0.5  # ASP: fraction of steps or a step count
    warmup: float = 0.05  # fraction of steps with a linear LR warm-up, then cosine
    clip: float = 1.0  # gradient-norm clipping (0: none)
    eval_every: int | None = None  # default: steps // 10
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    compare: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.nm.split(":")[0])

    @property
    def m(self) -> int:
        return int(self.nm.split(":")[1])

    def resolved(self) -> TrainConfig:
        """A copy with the task's defaults filled in."""
        cls = task_class(self.task)
        out = dataclasses.replace(self)
        out.steps = self.steps or cls.default_steps
        out.batch_size = self.batch_size or cls.default_batch_size
        out.lr = self.lr if self.lr is not None else cls.default_lr
        out.window = self.window or max(5, out.steps // 20)
        out.eval_every = self.eval_every or max(1, out.steps // 10)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key} = {value!r} is invalid: {allowed}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value; returns ``cfg``."""
    if cfg.task not in TASKS:
        _fail("task", cfg.task, f"choose one of {', '.join(TASKS)}")
    for recipe in [cfg.recipe, *cfg.compare]:
        if recipe not in RECIPES:
            _fail("recipe", recipe, f"choose from {', '.join(RECIPES)}")
    try:
        n, m = (int(v) for v in cfg.nm.split(":"))
    except ValueError:
        _fail("nm", cfg.nm, "write it as N:M, e.g. 2:4")
    if not 1 <= n < m <= 32:
        _fail("nm", cfg.nm, "need 1 <= N < M <= 32")
    for key in ("steps", "batch_size", "eval_every", "window"):
        value = getattr(cfg, key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            _fail(key, value, "a positive integer")
    if cfg.log_every < 1:
        _fail("log_every", cfg.log_every, "a positive integer")
    for key in ("lr", "weight_decay", "srste_decay", "variance_floor", "clip"):
        value = getattr(cfg, key)
        if value is not None and not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0
        ):
            _fail(key, value, "a finite number >= 0")
    for key in ("t_min", "t_max", "prune_at"):
        value = getattr(cfg, key)
        if not (isinstance(value, int | float) and value >= 0):
            _fail(key, value, "a fraction of the steps (< 1) or a step count")
    if not 0 <= cfg.warmup < 1:
        _fail("warmup", cfg.warmup, "a fraction of the steps in [0, 1)")
    if cfg.criterion not in CRITERIA:
        _fail("criterion", cfg.criterion, f"choose from {', '.join(CRITERIA)}")
    if cfg.criterion == "paper" and cfg.threshold is None:
        _fail("threshold", None, "criterion 'paper' needs a threshold (e.g. 1e-8)")
    if not cfg.device.startswith(("cpu", "cuda")):
        _fail("device", cfg.device, "cpu or cuda[:index]")
    return cfg


def read_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML (or, with PyYAML installed, YAML) file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{path}: YAML needs PyYAML (pip install pyyaml); or use TOML"
            ) from None
        data = yaml.safe_load(text) or {}
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings")
    return data


def build(file_settings: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """Defaults, overridden by the file, overridden by flags given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(file_settings) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(names)}")
    values = {**file_settings, **{k: v for k, v in flags.items() if v is not None}}
    return validate(TrainConfig(**values))


def load_saved(run_dir: Path) -> TrainConfig:
    """The resolved configuration a run directory was started with."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    return validate(TrainConfig(**json.loads(path.read_text())))

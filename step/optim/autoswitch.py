"""AutoSwitch: when to end STEP's precondition phase.

Each precondition step the optimizer reports, for the sparsified weights,
``z = mean |v_t - v_{t-1}|`` and ``v = mean v_t`` (means over all their elements,
reduced across ranks). Two criteria decide, at the end of step ``t``, whether to switch:

``"paper"`` (the published reference rule)
    switch when ``t >= t_max``, or ``t >= t_min`` and the mean of the last ``window``
    samples of ``z`` (fewer while the window fills) is below ``threshold``. ``z`` scales
    with the loss squared, so ``threshold`` must be tuned per model and loss scale.

``"plateau"`` (the default; scale-free)
    ``r_t = z_t / v_t`` is the relative change of v per step: multiplying the loss by
    ``c`` multiplies both by ``c^2``, and per-element means do not depend on the model's
    size, so ``r`` is invariant to both. Early on v grows from zero and ``r`` falls like
    ``1/t``; once v has settled, ``r`` stays at a level set by the gradient noise
    (about ``(1-b2) * E|g^2 - v| / v``). The statistic is the mean of ``r`` over the last
    ``window`` steps divided by its mean over the ``window`` steps before: it rises
    towards 1 as ``r`` flattens. Switch when ``t >= t_min`` and it reaches ``threshold``
    (default 0.95, i.e. ``r`` fell by less than 5% over a window), or when ``t >= t_max``.

Switching happens once. The decision, the statistic and the sample history are in
:meth:`AutoSwitch.state_dict`, so a resumed run switches on the same step.

:meth:`AutoSwitch.for_run` gives the settings STEP uses for a run whose length it is told
(``STEP(..., total_steps=N)``): a window fitted to the run and a ``t_max`` that makes the
switch come by the middle of the run at the latest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .checks import check_choice, check_int, check_real, describe, is_int, is_real

CRITERIA = ("plateau", "paper")
DEFAULT_THRESHOLD = {"plateau": 0.95}
STATE_KEYS = ("criterion", "threshold", "t_min", "t_max", "window", "total_steps",
              "switch_step", "samples", "history")  # fmt: skip

RUN_T_MIN = 0.1
""":meth:`AutoSwitch.for_run`'s earliest switch, a fraction of the run (the CLI's too)."""
RUN_T_MAX = 0.5
""":meth:`AutoSwitch.for_run`'s latest switch: at least half of the run learns masks."""
RUN_WINDOWS = 20
""":meth:`AutoSwitch.for_run` fits this many windows into the run (the CLI's rule)..."""
RUN_MIN_WINDOW = 5
"""... but takes no window shorter than this (a shorter one is all noise)."""


@dataclass
class AutoSwitchRecord:
    """One precondition step as AutoSwitch saw it."""

    step: int
    z: float
    v: float
    statistic: float | None
    switch: bool


@dataclass
class _Window:
    """The last ``2 * size`` values of a stream: enough for two consecutive windows."""

    size: int
    values: deque = field(default_factory=deque)

    def push(self, x: float) -> None:
        self.values.append(x)
        if len(self.values) > 2 * self.size:
            self.values.popleft()

    def mean_last(self) -> float:
        last = list(self.values)[-self.size :]
        return sum(last) / len(last)

    def ratio_of_halves(self) -> float | None:
        """mean(last window) / mean(window before); None until 2 windows are full."""
        if len(self.values) < 2 * self.size:
            return None
        values = list(self.values)
        previous = sum(values[: self.size])
        return sum(values[self.size :]) / previous if previous > 0 else 1.0


class AutoSwitch:
    """Decides the end of the precondition phase from the stream of v statistics.

    Args:
        t_min, t_max: earliest and latest switch step. An ``int`` is a step count; a
            ``float`` in (0, 1] is a fraction of ``total_steps``. ``t_max=None``: no cap.
        window: ``T_w``; default ``round(1 / (1 - beta2))`` (1000 for beta2 = 0.999), set
            from the optimizer's beta2 when it is attached.
        criterion: ``"plateau"`` (default, scale-free) or ``"paper"``.
        threshold: the criterion's threshold; ``"plateau"`` defaults to 0.95,
            ``"paper"`` has no default (it is in units of the squared gradient).
        total_steps: the run's length, needed for fractional ``t_min``/``t_max``.

    ``history`` holds an :class:`AutoSwitchRecord` per observed step.
    """

    def __init__(
        self,
        t_min: int | float = 0,
        t_max: int | float | None = None,
        window: int | None = None,
        criterion: str = "plateau",
        threshold: float | None = None,
        total_steps: int | None = None,
    ) -> None:
        criterion = check_choice(criterion, "AutoSwitch criterion", CRITERIA)
        if threshold is None:
            if criterion not in DEFAULT_THRESHOLD:
                raise ValueError(
                    f"criterion {criterion!r} needs a threshold (in units of the mean |dv|; "
                    "it depends on the loss scale), e.g. AutoSwitch(criterion='paper', "
                    "threshold=1e-8)"
                )
            threshold = DEFAULT_THRESHOLD[criterion]
        threshold = check_real(threshold, "threshold", low_open=True, example="0.95")
        if total_steps is not None:
            total_steps = check_int(total_steps, "total_steps")
        if window is not None:
            window = check_int(window, "window", hint=" (steps)")
        self.criterion = criterion
        self.threshold = float(threshold)
        self.total_steps = total_steps
        self.t_min = self._steps(t_min, "t_min")
        self.t_max = None if t_max is None else self._steps(t_max, "t_max")
        if self.t_max is not None and self.t_max < max(self.t_min, 1):
            raise ValueError(f"t_max ({self.t_max}) must be >= t_min ({self.t_min}) and >= 1")
        self.window = window
        self.switch_step: int | None = None
        self.history: list[AutoSwitchRecord] = []
        self._samples: _Window | None = None

    @classmethod
    def for_run(cls, total_steps: int, beta2: float = 0.999) -> AutoSwitch:
        """The plateau criterion fitted to a run of ``total_steps`` optimizer steps.

        ``window = min(round(1 / (1 - beta2)), max(5, total_steps // 20))`` (v's own time
        scale, but at least 20 windows in the run), ``t_min = 10%`` and ``t_max = 50%`` of
        the run: the switch comes when v has settled, and by the middle of the run at the
        latest, so at least half of it learns masks. These are ``step-sparsity train``'s
        defaults too. ``STEP(..., total_steps=N)`` builds its AutoSwitch with this.
        """
        total_steps = check_int(total_steps, "total_steps", hint=" (the run's optimizer steps)")
        beta2 = check_real(beta2, "beta2", high=1.0, example="0.999")
        own = max(1, round(1.0 / (1.0 - beta2)))
        window = min(own, max(RUN_MIN_WINDOW, total_steps // RUN_WINDOWS))
        return cls(t_min=RUN_T_MIN, t_max=RUN_T_MAX, window=window, total_steps=total_steps)

    def _steps(self, value: int | float, name: str) -> int:
        """``t_min``/``t_max`` as a step: an int as is, a float as a fraction of the run."""
        if is_int(value):
            return check_int(value, name, low=0, hint=" (a step) or a float in (0, 1]")
        if not is_real(value):
            raise TypeError(
                f"{name} must be a step count (int) or a fraction (float); got {describe(value)}"
            )
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name}={value} as a fraction of the run must lie in (0, 1]")
        if self.total_steps is None:
            raise ValueError(
                f"{name}={value} is a fraction of the run: pass total_steps=... to AutoSwitch, "
                f"or give {name} as a step count (int)"
            )
        return max(1, round(value * self.total_steps))

    def attach(self, beta2: float) -> None:
        """Called by the optimizer: fixes the default window from its beta2."""
        if self.window is None:
            self.window = max(1, round(1.0 / (1.0 - beta2)))

    @property
    def switched(self) -> bool:
        return self.switch_step is not None

    def cannot_switch_within(self, steps: int) -> str | None:
        """Why this AutoSwitch cannot switch in the first ``steps`` steps (a sentence for a
        warning), or None if it may (it is sure to only if ``t_max <= steps``)."""
        if self.switched and self.switch_step <= steps:
            return None
        if self.t_min > steps:
            return f"t_min is {self.t_min}"
        if self.t_max is not None and self.t_max <= steps:
            return None
        cap = "there is no t_max" if self.t_max is None else f"t_max is {self.t_max}"
        window = self.window
        if self.criterion == "plateau" and window is not None and 2 * window > steps:
            return (f"the plateau criterion compares two windows of {window} steps, so it "
                    f"cannot decide before step {2 * window}, and {cap}")  # fmt: skip
        return None

    def observe(self, step: int, z: float, v: float) -> bool:
        """Record step ``step``'s sample; return True if the switch happens at its end."""
        if self.switched:
            raise RuntimeError(f"AutoSwitch already switched at step {self.switch_step}")
        if self.window is None:
            raise RuntimeError("AutoSwitch.attach(beta2) must be called before observe()")
        if self._samples is None:
            self._samples = _Window(self.window)
        if self.criterion == "paper":
            self._samples.push(z)
            statistic: float | None = self._samples.mean_last()
            settled = statistic < self.threshold
        else:
            self._samples.push(z / v if v > 0 else 0.0)
            statistic = self._samples.ratio_of_halves()
            settled = statistic is not None and statistic >= self.threshold
        switch = (self.t_max is not None and step >= self.t_max) or (step >= self.t_min and settled)
        self.history.append(AutoSwitchRecord(step, z, v, statistic, switch))
        if switch:
            self.switch_step = step
        return switch

    def state_dict(self) -> dict:
        """Settings, decision, samples and history: all a resumed run needs."""
        return {
            "criterion": self.criterion,
            "threshold": self.threshold,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "window": self.window,
            "total_steps": self.total_steps,
            "switch_step": self.switch_step,
            "samples": list(self._samples.values) if self._samples is not None else None,
            "history": [vars(r).copy() for r in self.history],
        }

    def check_state_dict(self, state: object, where: str = "state") -> None:
        """Refuse (``ValueError``/``TypeError`` naming the entry) a ``state`` that
        :meth:`state_dict` did not write; changes nothing."""
        if not isinstance(state, dict) or set(state) != set(STATE_KEYS):
            keys = sorted(state) if isinstance(state, dict) else describe(state)
            raise ValueError(f"{where} must be an AutoSwitch.state_dict() with the keys "
                             f"{list(STATE_KEYS)}; got {keys}")  # fmt: skip
        check_choice(state["criterion"], f"{where}['criterion']", CRITERIA)
        check_real(state["threshold"], f"{where}['threshold']", low_open=True)
        check_int(state["t_min"], f"{where}['t_min']", low=0)
        for key, low in (("t_max", 1), ("window", 1), ("total_steps", 1), ("switch_step", 1)):
            if state[key] is not None:
                check_int(state[key], f"{where}[{key!r}]", low=low)
        samples, history = state["samples"], state["history"]
        if samples is not None and not (
            isinstance(samples, list) and all(is_real(x) for x in samples)
        ):
            raise ValueError(f"{where}['samples'] must be None or a list of floats")
        fields = set(AutoSwitchRecord.__dataclass_fields__)
        if not isinstance(history, list) or not all(
            isinstance(r, dict) and set(r) == fields for r in history
        ):
            raise ValueError(f"{where}['history'] must be a list of dicts with {sorted(fields)}")

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (checked first)."""
        self.check_state_dict(state)
        for key in ("criterion", "threshold", "t_min", "t_max", "window", "total_steps"):
            setattr(self, key, state[key])
        self.switch_step = state["switch_step"]
        self._samples = None
        if state["samples"] is not None:
            self._samples = _Window(self.window, deque(state["samples"]))
        self.history = [AutoSwitchRecord(**r) for r in state["history"]]

    def __repr__(self) -> str:
        return (
            f"AutoSwitch(criterion={self.criterion!r}, threshold={self.threshold}, "
            f"t_min={self.t_min}, t_max={self.t_max}, window={self.window}, "
            f"switch_step={self.switch_step})"
        )

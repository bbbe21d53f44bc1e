"""STEP under Hugging Face ``transformers.Trainer`` (docs/trainer.md).

The optimizer goes in through the Trainer's documented ``optimizers=(optimizer, None)``
argument (the Trainer builds its LR scheduler from ``TrainingArguments`` over it), and
:class:`STEPCallback` checks at the start of ``train()`` that STEP can switch within the
run and logs the phase. The rest is the Trainer's own: gradient accumulation counts one
STEP step per optimizer step, checkpoints carry STEP's state in ``optimizer.pt`` (so
``resume_from_checkpoint`` continues in the same phase, at the same step), and
``save_model`` writes a ``save_pretrained`` directory whose ``config.json`` holds the
sparsity plan (``step.restore_sparsity``, ``step-sparsity export``).
"""

from __future__ import annotations

import warnings

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..optim import STEP

logger = logging.get_logger(__name__)

LOG_KEYS = ("mask_learning", "switch_step")
"""What :class:`STEPCallback` adds to the Trainer's logs: 1.0 once the masks are being
learned (else 0.0), and the switch step once there is one."""


def step_trainer_optimizer(
    model: nn.Module, args: TrainingArguments, total_steps: int | None = None, **kwargs
) -> STEP:
    """STEP over ``model``'s trainable parameters, set up from ``args`` as the Trainer sets
    up its own AdamW.

    ``lr``, ``betas`` and ``eps`` are ``args.learning_rate``, ``(args.adam_beta1,
    args.adam_beta2)`` and ``args.adam_epsilon``; ``args.weight_decay`` applies to the
    parameters of 2 or more dims, not to biases and norms (the Trainer's rule for the usual
    layers). ``total_steps`` (the run's optimizer steps, for STEP's AutoSwitch) defaults
    to ``args.max_steps``. ``kwargs`` go to :class:`step.optim.STEP` (``srste_decay``,
    ``autoswitch``...). Pass the result as ``Trainer(..., optimizers=(optimizer, None))``.

    Raises ``ValueError`` without a run length: ``args.max_steps`` unset (an epoch-based
    run) and no ``total_steps``.
    """
    if total_steps is None:
        if args.max_steps <= 0:
            raise ValueError(
                "step_trainer_optimizer needs the run's length in optimizer steps: set "
                "TrainingArguments(max_steps=...), or pass total_steps= (for an epoch-based "
                "run, ceil(len(train_dataset) / (per_device_train_batch_size * "
                "gradient_accumulation_steps * world_size)) * num_train_epochs; STEPCallback "
                "checks it against the Trainer's own count when train() starts)"
            )
        total_steps = args.max_steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return STEP(
        [g for g in groups if g["params"]],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        total_steps=total_steps,
        **kwargs,
    )


def find_step(optimizer: object) -> STEP:
    """The :class:`~step.optim.STEP` inside the Trainer's ``optimizer`` (Accelerate wraps
    it in an ``AcceleratedOptimizer``); ``TypeError`` if there is none."""
    inner = optimizer
    while not isinstance(inner, STEP) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, STEP):
        raise TypeError(
            f"STEPCallback: the Trainer's optimizer is {type(optimizer).__name__}, not a "
            "step.optim.STEP: pass Trainer(..., optimizers=(step_trainer_optimizer(model, "
            "args), None))"
        )
    return inner


class STEPCallback(TrainerCallback):
    """Checks and logs STEP under the Trainer.

    - ``on_train_begin``: warns (``UserWarning``) if STEP cannot switch within the
      Trainer's ``max_steps``, naming ``total_steps=`` the Trainer's count.
    - ``on_step_end``: at the switch, logs it (and asks the Trainer to log that step).
    - ``on_log``: adds ``mask_learning`` (0.0 / 1.0) and, after the switch,
      ``switch_step`` to the logs and to ``state.log_history``.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        opt = find_step(kwargs.get("optimizer"))
        if opt.phase != "precondition":
            return
        reason = opt.autoswitch.cannot_switch_within(state.max_steps)
        if reason is not None:
            warnings.warn(
                f"STEP cannot switch to mask learning within this run of {state.max_steps} "
                f"optimizer steps ({reason}), so it would never learn masks: build it with "
                f"step_trainer_optimizer(model, args, total_steps={state.max_steps}) or "
                f"STEP(..., total_steps={state.max_steps})",
                UserWarning,
                stacklevel=2,
            )

    def __init__(self) -> None:
        self._announced: int | None = None  # the switch step already logged

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> TrainerControl:
        opt = find_step(kwargs.get("optimizer"))
        just_switched = opt.switch_step is not None and opt.switch_step == opt.t
        if just_switched and self._announced != opt.switch_step:  # once: a step skipped by
            self._announced = opt.switch_step  # the GradScaler leaves opt.t where it was
            logger.info(f"STEP: v frozen at the end of step {opt.t}; masks learned from now on")
            control.should_log = True
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if kwargs.get("optimizer") is None:  # evaluate() before any train(): no optimizer yet
            return
        opt = find_step(kwargs.get("optimizer"))
        logs = kwargs.get("logs")
        values = {"mask_learning": float(opt.phase == "mask_learning")}
        if opt.switch_step is not None:
            values["switch_step"] = opt.switch_step
        if logs is not None:
            logs.update(values)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(values)

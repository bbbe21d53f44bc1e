"""Optimizers for N:M sparse training: STEP and the baselines it is compared with."""

from .autoswitch import AutoSwitch, AutoSwitchRecord
from .nm_adamw import NMAdamW
from .recipes import ASP, RECIPES, SRSTE, STEP, DenseAdamW, make

__all__ = ["ASP", "RECIPES", "SRSTE", "STEP", "AutoSwitch", "AutoSwitchRecord", "DenseAdamW",
           "NMAdamW", "make"]  # fmt: skip

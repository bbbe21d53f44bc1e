"""Optimizers for N:M sparse training: STEP, the baselines it is compared with, and S-STE."""

from .autoswitch import AutoSwitch, AutoSwitchRecord
from .nm_adamw import NMAdamW
from .recipes import ASP, RECIPES, SRSTE, STEP, DenseAdamW, make
from .sste import SSTE

__all__ = ["ASP", "RECIPES", "SRSTE", "SSTE", "STEP", "AutoSwitch", "AutoSwitchRecord",
           "DenseAdamW", "NMAdamW", "make"]  # fmt: skip

"""Triton kernels of step-sparsity, installed as ``step.kernels``.

The kernels' modules live in the checkout's top-level ``kernels/`` folder, which has no
``__init__.py`` of its own: from the checkout's root (``python -m pytest``, ``python -c``)
``import kernels`` then finds the installed Hugging Face ``kernels`` package that
``transformers`` needs, not ours. This file is the package's one ``__init__``: a wheel or
regular install places it beside the modules (setup.py); in a source checkout and an
editable install the package's path gains the top-level folder.

Kernels and their launchers only: no autograd, no dispatch, no input validation (the ops
in ``step.ops`` validate, then call a launcher here). Each launcher's pure-PyTorch
reference lives beside its op in ``step.ops`` under the same name with ``_ref``. This is
the bottom layer: its modules import torch, Triton and each other, nothing else of
``step``. Importing the package imports no launcher and no Triton, so ``step.ops`` can use
the plain-PyTorch modules here (``shapes``, ``adam_fused``, ...) with Triton absent.

``INTERPRET`` records whether the kernels were defined for the Triton CPU interpreter
(``TRITON_INTERPRET=1`` at import time); Triton fixes that choice when a kernel is defined.
"""

import os
from pathlib import Path

_CHECKOUT_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
if not Path(__file__).with_name("nm_select.py").exists():  # a checkout, not a wheel
    __path__.append(str(_CHECKOUT_KERNELS))  # noqa: F821 (a package's own __path__)

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype) -> str:
    """``tl.dot``'s input precision for ``dtype``: float32 uses TF32 where PyTorch's
    matmuls may (``torch.backends.cuda.matmul.allow_tf32``), IEEE float32 otherwise."""
    import torch

    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


__all__ = ["INTERPRET", "dot_precision"]

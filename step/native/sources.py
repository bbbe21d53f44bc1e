"""Where the native sources shipped with the package live (CUDA ``.cu``/``.cuh``, C ``.c``).

``csrc/`` is installed as the data package ``step.csrc`` (see setup.py), so the sources
are found the same way from a wheel, ``pip install .`` and an editable install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def csrc_dir() -> Path:
    """Directory holding the ``.cu``/``.cuh``/``.c`` sources."""
    return Path(str(resources.files("step.csrc")))


def cuda_sources() -> list[Path]:
    """Every ``.cu`` file shipped, sorted by name."""
    return sorted(csrc_dir().glob("*.cu"))

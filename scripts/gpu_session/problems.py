"""What the verdict reports (:class:`Problem`), and the lines of a log that reveal one:
error messages and CUDA errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

CUDA_ERROR = re.compile(
    r"CUDA error|illegal memory access|device-side assert|cudaError\w+|CUDA_ERROR_\w+"
    r"|unspecified launch failure|misaligned address|worker '?gw\d+'? crashed|node down"
    r"|Fatal Python error|Segmentation fault|core dumped"
)
"""Lines of a log or junit text that mean the device (or a worker) was poisoned."""
ERROR_LINE = re.compile(r"^(E\s+)?([\w.]*(Error|Exception)\b|ERROR\b|\S+: error:)")
"""A line naming an exception or an error (see :func:`last_error_line`)."""


@dataclass
class Problem:
    """Something the verdict reports: ``FAIL`` or ``PARTIAL``, and what."""

    level: str
    text: str


def last_error_line(text: str) -> str:
    """The last line of ``text`` that looks like an exception or error message (also
    pytest's ``E   SomeError: ...`` and ``ERROR ...`` lines); "" if none."""
    for line in reversed(text.splitlines()):
        if ERROR_LINE.match(line.strip()):
            return line.strip()[:300]
    return ""


def cuda_error_lines(name: str, text: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` lines of ``text`` matching :data:`CUDA_ERROR`, prefixed by ``name``."""
    hits = [line.strip()[:240] for line in text.splitlines() if CUDA_ERROR.search(line)]
    return [f"{name}: {line}" for line in hits[:limit]]

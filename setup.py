"""Thin setup: maps the top-level ``kernels/`` to ``step.kernels`` and ships ``csrc/``.

``kernels/`` has no ``__init__.py`` (so it never shadows Hugging Face's ``kernels`` from the
checkout's root); the package's ``__init__`` is ``step/kernels/__init__.py``, copied beside
the modules as package data of ``step``.

Everything else lives in pyproject.toml. ``csrc/`` becomes the data-only package
``step.csrc`` so the CUDA sources can be compiled at first use after any kind of install
(wheel, ``pip install .`` or editable).
"""

from setuptools import find_packages, setup

step_packages = find_packages(include=["step", "step.*"], exclude=["step.kernels"])

setup(
    packages=[*step_packages, "step.kernels", "step.csrc"],
    package_dir={"step.kernels": "kernels", "step.csrc": "csrc"},
    package_data={"step": ["kernels/__init__.py"], "step.csrc": ["*.cu", "*.cuh", "*.h", "*.c"]},
    include_package_data=False,
    zip_safe=False,
)

"""Thin setup: maps the top-level ``kernels/`` to ``step.kernels`` and ships ``csrc/``.

Everything else lives in pyproject.toml. ``csrc/`` becomes the data-only package
``step.csrc`` so the CUDA sources can be compiled at first use after any kind of install
(wheel, ``pip install .`` or editable).
"""

from setuptools import find_packages, setup

step_packages = find_packages(include=["step", "step.*"])

setup(
    packages=[*step_packages, "step.kernels", "step.csrc"],
    package_dir={"step.kernels": "kernels", "step.csrc": "csrc"},
    package_data={"step.csrc": ["*.cu", "*.cuh", "*.h", "*.c"]},
    include_package_data=False,
    zip_safe=False,
)

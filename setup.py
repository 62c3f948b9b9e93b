"""Packaging details pyproject.toml cannot say: the top-level configs/ and pipelines/ ship in the wheel.

They stay at the top of the repository (shared/DESIGN.md fixes the layout) and are
mapped into the package as ``udl_med/configs/`` and ``udl_med/pipelines/``: every
``*.yaml`` file in them ships, without a list to keep up to date. At run time
:mod:`udl_med.shipped` finds them there, or in the source checkout.
"""

from setuptools import find_packages, setup

SHIPPED = {"udl_med.configs": "configs", "udl_med.pipelines": "pipelines"}

setup(
    packages=find_packages(include=["udl_med", "udl_med.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={name: ["*.yaml", "*.yml"] for name in SHIPPED},
)

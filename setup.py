"""Packaging beyond pyproject.toml: ship the top-level ``registry/`` (matrices, published numbers)
as package data ``arflowbench/registry/`` so an installed wheel finds them by name
(`arflowbench.registry_files`). The folder stays where it is in a checkout: one source of truth."""

from __future__ import annotations

from setuptools import find_packages, setup

#: data folders shipped as (data-only) packages
DATA = ("arflowbench.registry", "arflowbench.registry.matrices", "arflowbench.registry.paper")

setup(
    packages=[*find_packages(include=["arflowbench*"]), *DATA],
    package_dir={"arflowbench.registry": "registry"},
    package_data={name: ["*.toml"] for name in DATA},
)

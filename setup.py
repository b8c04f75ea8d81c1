"""Packages of the metaray wheel: `pipeline*`, plus the repository's configs/ as the package
data `pipeline/configs` (so `metaray config ls|cp` finds them in a pip install). Everything
else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["pipeline*"]), "pipeline.configs"],
    package_dir={"pipeline.configs": "configs"},
    package_data={"pipeline.configs": ["*.yaml"]},
)

"""The package list: every package under src/ plus vwl_lightning.conf, the top-level conf/ folder (its mapping is in
pyproject.toml), so a built wheel carries the Hydra configs. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "vwl_lightning.conf"])

"""buildunits: the metadata is in pyproject.toml; this lets tools that
still call `python3 setup.py` (and pip without PEP 517) build it."""

from setuptools import setup

setup()

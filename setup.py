"""Build shim: the packages are ``edgeflow*`` plus ``edgeflow._targets`` (the top-level targets/).

Everything else is declared in pyproject.toml. ``[tool.setuptools.packages.find]`` cannot add a package
that lives outside the ``edgeflow/`` tree, so the package list is computed here instead.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["edgeflow", "edgeflow.*"]), "edgeflow._targets"])

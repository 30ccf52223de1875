"""Build shim: the packages are ``edgeflow*`` plus ``edgeflow._targets`` (the top-level targets/).

Everything else is declared in pyproject.toml. ``[tool.setuptools.packages.find]`` cannot add a package
that lives outside the ``edgeflow/`` tree, so the package list is computed here instead, with the
same namespace-aware discovery pyproject's ``find`` used (sub-packages without ``__init__.py`` count).
"""

from setuptools import find_namespace_packages, setup

packages = find_namespace_packages(include=["edgeflow", "edgeflow.*"], exclude=["*.__pycache__"])
setup(packages=[*packages, "edgeflow._targets"])

"""Package discovery for the folder -> ``parazoo.*`` mapping of pyproject.toml.

The four code folders (arch/, ops/, training/, recipes/) install as parazoo.arch, parazoo.ops,
parazoo.training and parazoo.recipes (see [tool.setuptools.package-dir]); every subfolder with
an ``__init__.py`` is a subpackage, found here so that a new op or mixer folder needs no edit of
the packaging.
"""
import os

from setuptools import setup

ROOTS = ("arch", "ops", "training", "recipes")


def find_packages():
    here = os.path.dirname(os.path.abspath(__file__))
    pkgs = []
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(here, root)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, here).replace(os.sep, ".")
                pkgs.append("parazoo." + rel)
    return pkgs


setup(packages=find_packages())

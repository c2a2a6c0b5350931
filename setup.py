"""setuptools' entry point: the pure build, or with PORCH_COMPILE=1 the mypyc one (build_backend/)."""

from porch_build import setup_arguments  # build_backend/ is on the path of pyproject's backend-path
from setuptools import setup

setup(**setup_arguments())

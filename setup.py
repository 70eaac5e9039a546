"""Build glue: the C core is compiled by cffi (see tdpfast/_build.py)."""
from setuptools import setup

setup(cffi_modules=["tdpfast/_build.py:ffibuilder"])

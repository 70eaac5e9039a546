"""Build glue: cffi compiles the C engine (tdpfast/_build.py) and, as a separate extension,
the benchmark suite's limit loops (tdpfast/bench/_limits_build.py)."""
from setuptools import setup

setup(cffi_modules=["tdpfast/_build.py:ffibuilder", "tdpfast/bench/_limits_build.py:ffibuilder"])

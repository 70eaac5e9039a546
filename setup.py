"""Build glue: cffi compiles the C engine (tdpfast/_build.py) and, as a separate extension,
the benchmark suite's limit loops (tdpfast/bench/_limits_build.py).

cffi builds both extensions against the stable ABI (Py_LIMITED_API, ``.abi3.so``), so the
wheel is tagged ``cp39-abi3`` to say it loads on every CPython from 3.9 on."""
from setuptools import setup

setup(cffi_modules=["tdpfast/_build.py:ffibuilder", "tdpfast/bench/_limits_build.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp39"}})

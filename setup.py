"""Build glue: the C core is compiled by cffi (see tdpfast/_build.py).

cffi builds the extension against the stable ABI (Py_LIMITED_API, an ``.abi3.so``), so the
wheel is tagged ``cp39-abi3`` to say it loads on every CPython from 3.9 on."""
from setuptools import setup

setup(cffi_modules=["tdpfast/_build.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp39"}})

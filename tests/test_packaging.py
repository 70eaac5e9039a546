"""Packaging (issue 11): LICENSE and an SPDX license string, classifiers and real URLs, one
version, an abi3 wheel tag, an sdist that carries the test suite, and a clear error when
tdpfast is imported from a source tree whose C core was never built.

The full round trip (python -m build -> fresh venv -> pip install sdist[test] -> pytest in
the unpacked sdist) needs the package index and takes minutes: tools/sdist_roundtrip.py."""
import os
import re
import shutil
import subprocess
import sys

import tdpfast
from conftest import SUBPROCESS_CWD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(tdpfast.__file__))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def project_table():
    text = read("pyproject.toml")
    return text[text.index("[project]"):text.index("\n[", text.index("[project]") + 1)]


def test_license_file_and_spdx_string():
    lic = read("LICENSE")
    assert lic.startswith("MIT License") and "The tdpfast authors" in lic
    assert "Permission is hereby granted, free of charge" in lic
    proj = project_table()
    assert re.search(r'^license = "MIT"$', proj, re.M)          # PEP 639, not the deprecated table
    assert re.search(r'^license-files = \["LICENSE"\]$', proj, re.M)
    assert "License ::" not in proj                               # no classifier beside the expression
    floor = re.search(r'"setuptools>=(\d+)', read("pyproject.toml")).group(1)
    assert int(floor) >= 77                                       # the first setuptools that takes it


def test_classifiers_and_urls_are_there_and_not_placeholders():
    text = read("pyproject.toml")
    classifiers = re.findall(r'^\s+"([A-Z][^"]+ :: [^"]+)",?$', text, re.M)
    assert "Programming Language :: Python :: 3" in classifiers and "Programming Language :: C" in classifiers
    urls = text[text.index("[project.urls]"):].split("\n\n")[0]
    links = re.findall(r'"(https://[^"]+)"', urls)
    assert links
    for u in links:
        assert not re.search(r"example\.|localhost|TODO|XXX|your-?(org|name)", u, re.I), u


def test_one_version():
    assert re.search(r'^dynamic = \["version"\]$', project_table(), re.M)
    assert 'version = {attr = "tdpfast.__version__"}' in read("pyproject.toml")
    assert re.fullmatch(r"\d+\.\d+\.\d+", tdpfast.__version__)


def test_wheel_is_tagged_abi3_like_the_extension():
    setup = read("setup.py")
    assert re.search(r'"bdist_wheel":\s*\{"py_limited_api":\s*"cp39"\}', setup)
    assert 'requires-python = ">=3.9"' in read("pyproject.toml")   # the tag's floor matches


def test_sdist_manifest_carries_what_the_tests_need():
    rules = [ln.split() for ln in read("MANIFEST.in").splitlines() if ln.strip() and not ln.startswith("#")]
    grafts = {r[1] for r in rules if r[0] == "graft"}
    assert {"csrc", "tests", "benches", "docs"} <= grafts
    assert any(r[0] == "include" and "LICENSE" in r for r in rules)
    # What the test suite opens from the tree is under those directories.
    for path in ("tests/conftest.py", "tests/c", "benches/conftest.py", "docs/json/fuzz.schema.json",
                 "csrc/tdpfast.h"):
        assert os.path.exists(os.path.join(ROOT, path)), path
        assert path.split("/")[0] in grafts


def test_import_from_an_unbuilt_source_tree_says_what_to_do(tmp_path):
    shutil.copytree(PKG, tmp_path / "tdpfast",
                    ignore=shutil.ignore_patterns("_tdpfast*.so", "_tdpfast*.pyd", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", "import tdpfast"], capture_output=True, text=True, timeout=60,
                       env=env, cwd=SUBPROCESS_CWD)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and "pip install -e ." in last and "_build.py" in last
    assert "ModuleNotFoundError" not in p.stderr

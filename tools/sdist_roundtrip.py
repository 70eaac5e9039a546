#!/usr/bin/env python3
"""The packaging acceptance check: build the sdist and the wheel with ``python -m build``,
install the sdist with its test extra into a fresh virtual environment, unpack the sdist
and run ``pytest`` in the unpacked tree with that environment's tdpfast.

Also checks that the wheel is tagged abi3 like its extension and carries the LICENSE.

    python tools/sdist_roundtrip.py [--keep] [-- PYTEST ARGS...]

Needs the ``build`` package (``pip install build``) and the package index (or a local
mirror) for the test extra's dependencies. Exit status 0 when every step passed.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(title: str, cmd, **kw) -> None:
    print(f"== {title}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tdpfast-sdist-")
    try:
        dist = os.path.join(work, "dist")
        step("build sdist and wheel", [sys.executable, "-m", "build", "--outdir", dist, ROOT])
        sdist = glob.glob(os.path.join(dist, "tdpfast-*.tar.gz"))[0]
        wheel = glob.glob(os.path.join(dist, "tdpfast-*.whl"))[0]
        name = os.path.basename(wheel)
        if "-abi3-" not in name:
            print(f"FAIL: the wheel {name} is not tagged abi3", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
        if not any(n.endswith(".abi3.so") for n in names):
            print(f"FAIL: the wheel {name} has no .abi3.so extension: {names}", file=sys.stderr)
            return 1
        if not any(n.endswith("LICENSE") for n in names):
            print(f"FAIL: the wheel {name} carries no LICENSE", file=sys.stderr)
            return 1
        print(f"   wheel {name}: abi3 extension and LICENSE present")
        venv = os.path.join(work, "venv")
        step("fresh virtual environment", [sys.executable, "-m", "venv", venv])
        py = os.path.join(venv, "bin", "python")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        env.pop("PYTHONPATH", None)
        step("install the sdist with [test]", [py, "-m", "pip", "install", "-q", f"{sdist}[test]"], env=env)
        step("tdpfast --version", [os.path.join(venv, "bin", "tdpfast"), "--version"], env=env)
        src = os.path.join(work, "src")
        with tarfile.open(sdist) as t:
            t.extractall(src)
        tree = glob.glob(os.path.join(src, "tdpfast-*"))[0]
        # The console script, not `python -m pytest`: the unpacked tree's unbuilt tdpfast/
        # must not shadow the installed package.
        step("pytest in the unpacked sdist", [os.path.join(venv, "bin", "pytest"), "-q", *args.pytest_args],
             cwd=tree, env=env)
        print("sdist round trip: ok")
        return 0
    except subprocess.CalledProcessError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

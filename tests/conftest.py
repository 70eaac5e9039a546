"""Shared test helpers."""
import os
import tempfile

import tdpfast

# Subprocesses must import the tdpfast these tests import (installed, or this checkout
# built in place) — never the source tree by accident because it is the working
# directory: they run from a scratch directory with PYTHONPATH naming the package's home.
PKG_HOME = os.path.dirname(os.path.dirname(os.path.abspath(tdpfast.__file__)))
SUBPROCESS_ENV = dict(os.environ, PYTHONPATH=PKG_HOME)
SUBPROCESS_CWD = tempfile.mkdtemp(prefix="tdpfast-tests-")
